"""The red-team harness's short run (`bench/redteam`), through the real stack: it measures what
it claims. Tiny budgets, defense off (a stack of its own, without the analytics worker), plus two
callers the defense-side state is set for beforehand (a quarantined subject, a lowered risk
multiplier), so the harness must see and place those actions. Nothing here depends on speed:
counts are of rows and requests, and the thresholds are what the mathematics gives."""

from __future__ import annotations

import ipaddress
import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.redteam.client import first_action
from bench.redteam.report import benign_summary, markdown
from bench.redteam.run import (
    Plan,
    nominal_limits,
    run_phase,
    short_plan,
    start_stack,
    stop_stack,
)
from extauthz.dev.devstack import Stack
from tests.e2e.conftest import cli


def _decisions(stack: Stack, subjects: set[str], expected: int) -> list[dict[str, Any]]:
    """The decision log's lines for `subjects`, once the writer thread has written `expected`."""
    path = stack.logs / "decisions.log"
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        mine = [d for d in lines if d.get("subject") in subjects]
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The harness's own stack, defense off: the suite's stack runs the analytics worker,
    which would act on these attacks (that is `make redteam`'s defense-on half)."""
    run, defense = start_stack(tmp_path_factory.mktemp("redteam-stack"), "off")
    assert defense == "off"
    try:
        yield run
    finally:
        stop_stack(run)


@pytest.fixture(scope="module")
def results(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    plans, seconds = short_plan()
    plans += [
        Plan("knockoff", ["127.0.30.1"], 20, label="canary-q", params={"step": 5}),
        Plan("knockoff", ["127.0.31.1"], 10, label="canary-t", params={"step": 5}),
    ]
    cli(stack, "quarantine", "add", "--subject", "rt-canary-q", "--ttl", "10m", "--cause", "t")
    cli(stack, "throttle", "set", "--subject", "rt-canary-t", "--multiplier", "0.5", "--ttl", "10m")
    try:
        out = run_phase(stack, plans, seconds, tmp_path_factory.mktemp("redteam"))
    finally:
        cli(stack, "quarantine", "release", "--subject", "rt-canary-q")
        cli(stack, "throttle", "clear", "--subject", "rt-canary-t")
    return {r["label"]: r for r in out}


def test_every_request_is_one_the_gateway_decided_from_the_callers_address(
    stack: Stack, results: dict[str, dict[str, Any]]
) -> None:
    subjects = {c["subject"]: c["source"] for r in results.values() for c in r["callers"]}
    total = sum(r["requests"] for r in results.values())
    logged = _decisions(stack, set(subjects), total)
    assert len(logged) == total
    per_subject = Counter(d["subject"] for d in logged)
    for r in results.values():
        for i, caller in enumerate(r["callers"]):
            made = sum(1 for rec in r["records"] if rec["caller"] == i)
            assert per_subject[caller["subject"]] == made, caller
    for d in logged:
        assert d["source_ip"] == subjects[d["subject"]]


def test_defense_off_leaves_attacks_untouched_and_the_evaluator_agrees_with_the_server(
    results: dict[str, dict[str, Any]],
) -> None:
    nominal = nominal_limits()
    for label in ("eqsolve", "knockoff", "hopskipjump", "sybil", "benign"):
        r = results[label]
        assert r["first_action"] is None, (label, r["first_action"])
        assert not any(rec.get("degraded") for rec in r["records"])  # oracle == served model
        assert all(rec["status"] == 200 for rec in r["records"])
        for caller in r["callers"]:
            assert {k: q for k, (q, _) in caller["policy"].items()} == nominal
    for label in ("eqsolve", "knockoff", "hopskipjump", "sybil"):
        assert results[label]["queries"] == results[label]["requests"]  # one row a request
    assert results["eqsolve"]["queries"] == 80
    assert results["knockoff"]["queries"] == 60
    assert results["hopskipjump"]["queries"] == 120
    assert results["sybil"]["queries"] == 60


def test_equation_solving_recovers_the_model_from_scores(
    results: dict[str, dict[str, Any]],
) -> None:
    """80 exact probability vectors over-determine the 65 unknowns per class: agreement ~1."""
    r = results["eqsolve"]
    assert r["final"] >= 0.99
    assert r["curve"][0][0] == 10 and r["curve"][0][1] < r["final"]


def test_evasion_curve_is_the_best_adversarial_example_so_far(
    results: dict[str, dict[str, Any]],
) -> None:
    values = [v for _, v in results["hopskipjump"]["curve"] if v is not None]
    assert values, "HopSkipJump found no adversarial example at all"
    assert values == sorted(values, reverse=True)
    assert values[-1] < values[0]  # the attack walks towards the digit


def test_sybil_spreads_over_ten_keys_from_one_network(
    results: dict[str, dict[str, Any]],
) -> None:
    r = results["sybil"]
    sources = {c["source"] for c in r["callers"]}
    assert len(sources) == 10 and len({c["subject"] for c in r["callers"]}) == 10
    net = ipaddress.ip_network("127.0.1.0/24")
    assert all(ipaddress.ip_address(s) in net for s in sources)
    per_caller = defaultdict(int)
    for rec in r["records"]:
        if rec["status"] == 200:
            per_caller[rec["caller"]] += rec["rows"]
    assert len(per_caller) == 10 and sum(per_caller.values()) == 60


def test_benign_replay_is_counted(results: dict[str, dict[str, Any]]) -> None:
    summary = benign_summary(results["benign"])
    assert summary["requests"] >= 4
    assert summary["degraded_or_denied"] == 0 and summary["quarantined_clients"] == []


def test_actions_are_seen_where_they_happen(results: dict[str, dict[str, Any]]) -> None:
    quarantined = results["canary-q"]
    assert quarantined["blocked"] and quarantined["queries"] == 0
    assert quarantined["first_action"]["queries"] == 0
    assert "quarantine" in quarantined["first_action"]["kind"]
    assert quarantined["records"][0]["status"] == 429
    throttled = results["canary-t"]
    assert throttled["first_action"]["queries"] == 0
    assert "limits_lowered" in throttled["first_action"]["kind"]
    minute = {k: q for k, (q, _) in throttled["callers"][0]["policy"].items()}["minute"]
    assert minute == nominal_limits()["minute"] // 2
    assert first_action(throttled["records"]) is not None


def test_report_names_every_attack(results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    text = markdown(
        {
            "date": "today",
            "short": True,
            "rows_per_request": 1,
            "modes": {"off": {"defense": "off", "results": list(results.values())}},
        }
    )
    for label in ("eqsolve", "knockoff", "hopskipjump", "sybil", "canary-q"):
        assert f"| {label} |" in text
    assert "| off (off) | 2 |" in text  # the benign row: two clients
