"""Issue 12 parts 1-3 through the real stack: Envoy -> extauthz (query events) -> Redis
streams -> the analytics worker (`extauthz analytics run`, started by the stack) -> risk,
degrade and quarantine in Redis -> the next decisions through Envoy."""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable

import httpx
import pytest
import redis as redis_sync

from extauthz.dev.devstack import Stack
from extauthz.store.schema import analytics_actions_key, quarantine_key, risk_key, subject_tag
from tests.e2e.conftest import Keys, cli
from tests.e2e.payloads import infer

pytestmark = pytest.mark.e2e

URL = "/v2/models/digits/infer"
RATE_LIMITED = {"error": "rate_limited"}


def _redis(stack: Stack) -> redis_sync.Redis:
    return redis_sync.Redis(port=stack.settings.redis_port, decode_responses=True)


def _replay_rows(stack: Stack) -> list[list[float]]:
    return json.loads((stack.heldout_dir / "digits.json").read_text())["replay"]["rows"]


def _send(gateway: httpx.Client, key: str, body: dict) -> httpx.Response:
    """One paced request that waits out a window's 429 (a careful attacker); a quarantine's
    429 is returned."""
    for _ in range(3):
        resp = gateway.post(URL, json=body, headers={"x-api-key": key})
        if resp.status_code != 429 or "quarantine" in _reason_hint(resp):
            return resp
        wait = int(resp.headers.get("retry-after", "1"))
        if wait > 5:  # not a per-second window: quarantined or out of quota
            return resp
        time.sleep(wait)
    return resp


def _reason_hint(resp: httpx.Response) -> str:
    return ""  # the client never learns why; the test reads Redis instead


def _minute_remaining(resp: httpx.Response) -> int:
    found = re.search(r'"minute";r=(\d+);', resp.headers.get("ratelimit", ""))
    assert found, resp.headers
    return int(found[1])


def _run(
    gateway: httpx.Client,
    stack: Stack,
    key: str,
    subject: str,
    bodies: Callable[[int], dict],
    budget: int,
    until: Callable[[dict], bool],
    pace: float = 0.03,
) -> tuple[int, list[httpx.Response]]:
    """Send up to `budget` queries; return (queries sent when `until(risk hash)` held, all)."""
    r = _redis(stack)
    sent: list[httpx.Response] = []
    for i in range(budget):
        sent.append(_send(gateway, key, bodies(i)))
        if until(r.hgetall(risk_key(subject))):
            return i + 1, sent
        time.sleep(pace)
    deadline = time.monotonic() + 8  # the last action may be on its (random) delay
    while time.monotonic() < deadline:
        if until(r.hgetall(risk_key(subject))):
            return budget, sent
        time.sleep(0.2)
    return 0, sent


def test_noise_extraction_is_throttled_degraded_then_quarantined_and_benign_replay_never(
    gateway: httpx.Client, stack: Stack, make_key: Keys
) -> None:
    attacker = make_key("an-noise", "analyst", "vision")
    benign = make_key("an-benign", "analyst", "vision")
    rng = random.Random(7)
    replay = _replay_rows(stack)

    def noise(i: int) -> dict:
        # an equation-solving / Knockoff-style client: random points, scores requested
        return infer([float(rng.randint(0, 16)) for _ in range(64)], ["predict_proba"])

    # benign replay interleaved with the attack, same source network (127.0.0.0/24)
    benign_codes = []

    def attack_and_replay(i: int) -> dict:
        benign_codes.append(
            gateway.post(
                URL, json=infer(replay[i % len(replay)]), headers={"x-api-key": benign}
            ).status_code
        )
        return noise(i)

    first, sent = _run(
        gateway,
        stack,
        attacker,
        "an-noise",
        attack_and_replay,
        150,
        lambda risk: float(risk.get("multiplier", 1)) < 1,
    )
    assert 0 < first <= 150, "no graduated response within 150 noise queries"
    risk = _redis(stack).hgetall(risk_key("an-noise"))
    assert int(risk["degrade"]) >= 1  # the field the shaping filter enforces (issue 13)
    # the lowered limits show in the next decision's own windows (one Lua call reads them)
    assert int(risk["until"]) > time.time() + 600
    if not _redis(stack).exists(_quarantine("an-noise")):
        time.sleep(1.1)  # past the per-second window, which the multiplier lowered too
        resp = gateway.post(URL, json=noise(0), headers={"x-api-key": attacker})
        assert resp.status_code == 200, (first, risk)
        used = len(sent) + 1
        assert _minute_remaining(resp) <= int(1000 * float(risk["multiplier"])) - used + 1

    quarantined, _ = _run(
        gateway,
        stack,
        attacker,
        "an-noise",
        noise,
        300,
        lambda _risk: bool(_redis(stack).exists(_quarantine("an-noise"))),
    )
    shown = cli(stack, "analytics", "show", "--subject", "an-noise").stdout
    assert quarantined, f"not quarantined within 300 more noise queries:\n{shown}"
    resp = gateway.post(URL, json=noise(0), headers={"x-api-key": attacker})
    assert resp.status_code == 429
    assert resp.json() == RATE_LIMITED  # the same body as any rate limit: no oracle

    # benign replay: every request served, nothing recorded against it
    for row in replay[len(benign_codes) :]:  # the rest (the attacker is stopped early now)
        benign_codes.append(
            gateway.post(URL, json=infer(row), headers={"x-api-key": benign}).status_code
        )
        time.sleep(0.04)  # well under its 50 per second
    assert benign_codes.count(200) == len(benign_codes) >= len(replay) - 1, benign_codes
    shown = json.loads(cli(stack, "analytics", "show", "--subject", "an-benign", "--json").stdout)
    assert shown["models"]["digits"]["evidence"]["rows"] >= 150  # it was scored
    assert shown["actions"] == [] and shown["risk"] == {} and shown["quarantine"] == {}, json.dumps(
        shown["actions"]
    )

    # every action in the decision log, with its evidence
    logged = [
        json.loads(line)
        for line in (stack.logs / "decisions.log").read_text().splitlines()
        if '"analytics_action"' in line
    ]
    mine = [a for a in logged if a["subject"] == "an-noise"]
    assert mine and all(a["evidence"]["rows"] > 0 and a["over"] for a in mine)
    assert max(a["level"] for a in mine) == 4
    assert not [a for a in logged if a["subject"] == "an-benign"]

    # operators clear it: served again at once (the worker starts its scores afresh)
    cli(stack, "analytics", "clear", "--subject", "an-noise")
    assert (
        gateway.post(URL, json=infer(replay[0]), headers={"x-api-key": attacker}).status_code == 200
    )


def _quarantine(subject: str) -> str:
    return quarantine_key(subject_tag(subject))


def test_a_small_step_boundary_walk_is_actioned(
    gateway: httpx.Client, stack: Stack, make_key: Keys
) -> None:
    """A decision-based attack (labels only) walking from one digit towards another."""
    key = make_key("an-walk", "analyst", "vision")
    replay = _replay_rows(stack)
    start, target = replay[0], replay[7]
    rng = random.Random(3)

    def walk(i: int) -> dict:
        a = 0.5 + 0.4 * ((i % 20) / 20)
        return infer(
            [
                x * (1 - a) + y * a + rng.uniform(-0.05, 0.05)
                for x, y in zip(start, target, strict=True)
            ]
        )

    r = _redis(stack)

    def named_neardup(_risk: dict) -> bool:
        # blended digits are out of distribution too, so `ood` (from 10 rows) may act first;
        # the small steps must still be named once `neardup` is judged (30 rows on)
        actions = r.lrange(analytics_actions_key("an-walk"), 0, -1)
        return any("neardup" in json.loads(a)["over"] for a in actions)

    first, _ = _run(gateway, stack, key, "an-walk", walk, 200, named_neardup)
    assert 0 < first <= 200
    risk = r.hgetall(risk_key("an-walk"))
    assert float(risk["multiplier"]) < 1


def test_sybils_of_one_network_are_actioned_before_any_is_judged_alone(
    behind_a_proxy: httpx.Client, stack: Stack, make_key: Keys
) -> None:
    """Ten keys in one /24 send 12 random queries each (under the 30 rows a tenant is judged
    alone at; ood alone judges from 10); a benign tenant replays held-out digits from the same
    network (a shared NAT). The network detector acts first (below 10 rows), then quarantines
    each key once it has 10 rows of its own and the network 150 (network.quarantine)."""
    sybils = {f"an-sybil-{i}": make_key(f"an-sybil-{i}", "analyst", "vision") for i in range(10)}
    nat = make_key("an-nat-benign", "analyst", "vision")
    replay = _replay_rows(stack)
    rng = random.Random(11)
    r = _redis(stack)
    codes = []
    for round_ in range(12):
        for i, key in enumerate(sybils.values()):
            body = infer([float(rng.randint(0, 16)) for _ in range(64)], ["predict_proba"])
            headers = {"x-api-key": key, "x-forwarded-for": f"198.51.100.{10 + i}"}
            behind_a_proxy.post(URL, json=body, headers=headers)
            time.sleep(0.02)
        for j in range(4):
            headers = {"x-api-key": nat, "x-forwarded-for": "198.51.100.200"}
            row = replay[(round_ * 4 + j) % len(replay)]
            codes.append(behind_a_proxy.post(URL, json=infer(row), headers=headers).status_code)
    deadline = time.monotonic() + 10
    actioned: set[str] = set()
    while time.monotonic() < deadline and len(actioned) < 10:
        actioned = {s for s in sybils if float(r.hget(risk_key(s), "multiplier") or 1) < 1}
        time.sleep(0.3)
    assert len(actioned) >= 8, actioned  # the last to send may not have been asked again
    shown = json.loads(
        cli(stack, "analytics", "show", "--subject", sorted(actioned)[0], "--json").stdout
    )
    first = shown["actions"][-1]  # newest first
    assert first["over"] == ["network"]
    assert first["evidence"]["rows"] < 30  # never judged alone
    deadline = time.monotonic() + 10
    quarantined: set[str] = set()
    while time.monotonic() < deadline and len(quarantined) < 10:
        quarantined = {s for s in sybils if r.exists(_quarantine(s))}
        time.sleep(0.3)
    assert len(quarantined) >= 8, quarantined  # the network's suspicious keys, from 10 rows each
    assert codes.count(200) == len(codes) == 48
    assert not r.exists(risk_key("an-nat-benign"))
    assert not r.exists(_quarantine("an-nat-benign"))
