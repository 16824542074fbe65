"""PolicyEngine with fakes: cache use, fail-open only where the policy's table says, shadow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from extauthz.policy.cache import DecisionCache
from extauthz.policy.engine import PolicyEngine
from extauthz.policy.revision import Fallback
from extauthz.policy.shadow import Shadow, summarize
from extauthz.request import parse_check_request
from extauthz.types import Denied, PolicyDecision, Principal, Reason, Status, Window
from tests.unit.checkrequests import check_request

ALICE = Principal("alice", ("analyst",), ("vision",), "standard", "api_key", "k1")
ALLOW = PolicyDecision(True, 200, "ok", (Window("minute", 10, 60),), decision_id="opa-1")
DENY = PolicyDecision(False, 403, "batch_too_large")


class FakeOpa:
    def __init__(self, by_path: dict[str, PolicyDecision | Exception]) -> None:
        self.by_path = by_path
        self.calls: list[str] = []

    async def decide(self, policy_input: dict[str, Any], path: str = "") -> PolicyDecision:
        self.calls.append(path)
        result = self.by_path[path]
        if isinstance(result, Exception):
            raise result
        return result


class FakeWatcher:
    def __init__(self, revision: str | None, fallback: Fallback | None = None) -> None:
        self.revision = revision
        self.fallback = fallback or Fallback()

    def current(self) -> str | None:
        return self.revision


def view(model: str = "digits", method: str = "POST", action: str = "infer"):  # type: ignore[no-untyped-def]
    path = f"/v2/models/{model}/infer" if action == "infer" else f"/v2/models/{model}"
    return parse_check_request(check_request(method, path, body=b'{"inputs":[]}'), 4096)


async def test_second_identical_request_is_a_cache_hit() -> None:
    opa = FakeOpa({"": ALLOW})
    engine = PolicyEngine(opa, FakeWatcher("rev1"), DecisionCache(100))  # type: ignore[arg-type]
    first = await engine.decide(view(), ALICE)
    second = await engine.decide(view(), ALICE)
    assert (first.source, second.source) == ("opa", "cache")
    assert first.decision_id == "opa-1" and second.decision_id == ""  # OPA did not decide it
    assert second.revision == "rev1" and second.quota == ALLOW.quota
    assert len(opa.calls) == 1


OUTAGE = Denied(Status.UNAVAILABLE, Reason.OPA_UNAVAILABLE)
IRIS_OPEN = Fallback(
    open_models={"iris": frozenset({"infer"})}, tiers={"standard": (Window("minute", 5, 60),)}
)


@pytest.mark.parametrize(
    ("model", "method", "action", "principal", "served"),
    [
        ("iris", "POST", "infer", ALICE, True),
        ("iris", "GET", "metadata", ALICE, False),  # action not in the fail-open table
        ("digits", "POST", "infer", ALICE, False),  # not a fail-open model
    ],
)
async def test_fail_open_only_where_the_policy_table_says(
    model, method, action, principal, served
) -> None:  # type: ignore[no-untyped-def]
    opa, watcher = FakeOpa({"": ALLOW}), FakeWatcher("r1", IRIS_OPEN)
    engine = PolicyEngine(opa, watcher, DecisionCache(10))  # type: ignore[arg-type]
    await engine.decide(view(model, method, action), principal)  # OPA allowed it under r1
    opa.by_path[""], watcher.revision = OUTAGE, None  # OPA down, r1 no longer confirmed
    if served:
        decision = await engine.decide(view(model, method, action), principal)
        assert decision.allow and decision.source == "fail_open" and decision.revision == "r1"
        assert decision.quota == ALLOW.quota  # the quota OPA gave for this very input
    else:
        with pytest.raises(Denied) as info:
            await engine.decide(view(model, method, action), principal)
        assert info.value.status is Status.UNAVAILABLE


def iris(body: bytes) -> Any:
    return parse_check_request(check_request("POST", "/v2/models/iris/infer", body=body), 4096)


async def test_fail_open_serves_only_inputs_opa_decided_under_the_last_revision() -> None:
    """Finding 5: while OPA is down a fail-open model is no longer served after a check of
    model/action and tier only: any input OPA has not decided (another principal, roles,
    body shape, outputs...) is refused, and OPA's own denials stay denials."""
    opa, watcher = FakeOpa({"": ALLOW}), FakeWatcher("r1", IRIS_OPEN)
    engine = PolicyEngine(opa, watcher, DecisionCache(10))  # type: ignore[arg-type]
    small = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP64","data":[1,2,3,4]}]}'
    await engine.decide(iris(small), ALICE)
    opa.by_path[""] = DENY
    big = small.replace(b"[1,4]", b"[64,4]")
    assert not (await engine.decide(iris(big), ALICE)).allow  # OPA refused the batch
    opa.by_path[""], watcher.revision = OUTAGE, None
    assert (await engine.decide(iris(small), ALICE)).source == "fail_open"
    assert not (await engine.decide(iris(big), ALICE)).allow  # still OPA's denial
    mallory = Principal("mallory", ("analyst",), ("vision",), "standard", "api_key", "k9")
    scores = small.replace(b"]}]}", b']}],"outputs":[{"name":"predict_proba"}]}')
    for unseen_view, who in ((iris(small), mallory), (iris(scores), ALICE)):
        with pytest.raises(Denied) as info:
            await engine.decide(unseen_view, who)
        assert info.value.status is Status.UNAVAILABLE


async def test_fail_open_never_uses_a_decision_of_an_older_revision() -> None:
    opa, watcher = FakeOpa({"": ALLOW}), FakeWatcher("r1", IRIS_OPEN)
    engine = PolicyEngine(opa, watcher, DecisionCache(10))  # type: ignore[arg-type]
    await engine.decide(view("iris"), ALICE)
    watcher.revision = "r2"  # a policy edit: r1's decisions no longer hold
    await engine.decide(view("digits"), ALICE)
    opa.by_path[""], watcher.revision = OUTAGE, None
    with pytest.raises(Denied):
        await engine.decide(view("iris"), ALICE)


async def test_policy_denials_are_never_turned_into_fail_open() -> None:
    engine = PolicyEngine(FakeOpa({"": DENY}), FakeWatcher("r", IRIS_OPEN), DecisionCache(10))  # type: ignore[arg-type]
    decision = await engine.decide(view("iris"), ALICE)
    assert not decision.allow


async def test_shadow_records_disagreements_and_never_changes_the_answer(tmp_path: Path) -> None:
    opa = FakeOpa({"": ALLOW, "extauthz/candidate/decision": DENY})
    log = tmp_path / "shadow.log"
    shadow = Shadow(opa, "extauthz/candidate/decision", 1.0, log, DecisionCache(10))  # type: ignore[arg-type]
    engine = PolicyEngine(opa, FakeWatcher("r"), DecisionCache(10), shadow)  # type: ignore[arg-type]
    decision = await engine.decide(view(), ALICE)
    assert decision.allow  # the enforced decision
    await shadow.drain()
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["enforced"]["allow"] is True
    assert records[0]["candidate"] == {"allow": False, "status": 403, "reason": "batch_too_large"}
    assert records[0]["input"]["principal"]["subject"] == "alice"
    summary = summarize(log)
    assert summary["total"] == 1
    assert summary["pairs"] == {("allow:ok", "deny:batch_too_large"): 1}


async def test_shadow_agreement_writes_nothing_and_sampling_zero_skips(tmp_path: Path) -> None:
    opa = FakeOpa({"": ALLOW, "cand": ALLOW})
    log = tmp_path / "shadow.log"
    agreeing = Shadow(opa, "cand", 1.0, log, DecisionCache(10))  # type: ignore[arg-type]
    await PolicyEngine(opa, FakeWatcher("r"), DecisionCache(10), agreeing).decide(view(), ALICE)  # type: ignore[arg-type]
    await agreeing.drain()
    assert not log.exists()
    assert opa.calls.count("cand") == 1
    never = Shadow(opa, "cand", 0.0, log, DecisionCache(10))  # type: ignore[arg-type]
    await PolicyEngine(opa, FakeWatcher("r2"), DecisionCache(10), never).decide(view(), ALICE)  # type: ignore[arg-type]
    await never.drain()
    assert opa.calls.count("cand") == 1


def test_fallback_from_policy_is_defensive() -> None:
    assert Fallback.from_policy(None) == Fallback()
    fb = Fallback.from_policy(
        {
            "open_models": {"iris": ["infer"]},
            "tiers": {"t": [{"name": "m", "limit": 1, "window": 60}]},
        }
    )
    assert fb.open_models == {"iris": frozenset({"infer"})}
    assert fb.tiers == {"t": (Window("m", 1, 60),)}


async def test_shadow_holds_at_most_its_bytes_of_waiting_inputs(tmp_path: Path) -> None:
    """Finding 3: inputs waiting for a candidate evaluation are bounded by bytes, not count."""
    opa = FakeOpa({"": ALLOW, "cand": DENY})
    shadow = Shadow(opa, "cand", 1.0, tmp_path / "s.log", DecisionCache(10), max_bytes=1000)  # type: ignore[arg-type]
    for i in range(10):  # 400 bytes each: only two fit
        shadow.submit("r", bytes([i]), {"i": i}, ALLOW, 400)
    assert len(shadow._tasks) == 2 and shadow.bytes == 800
    await shadow.drain()
    assert shadow.bytes == 0 and opa.calls.count("cand") == 2


async def test_shadow_log_rotates_at_its_size(tmp_path: Path) -> None:
    opa = FakeOpa({"": ALLOW, "cand": DENY})
    log = tmp_path / "s.log"
    shadow = Shadow(opa, "cand", 1.0, log, DecisionCache(10), log_max_bytes=2000)  # type: ignore[arg-type]
    for i in range(20):
        shadow.submit("r", bytes([i]), {"pad": "x" * 300, "i": i}, ALLOW, 300)
        await shadow.drain()
    assert log.stat().st_size <= 2000
    assert (tmp_path / "s.log.1").stat().st_size <= 2000
    assert (
        len(log.read_text().splitlines()) + len((tmp_path / "s.log.1").read_text().splitlines())
        < 20
    )
