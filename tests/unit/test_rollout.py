"""Model versions on the request path: the sticky bucket, the decision's `version`, the
x-extauthz-model-version header and the decision log. Fakes only here."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from extauthz.decisionlog import decision_record
from extauthz.policy.opa import parse_decision
from extauthz.policy.rollout import StickyBucket, bucket_key
from extauthz.request import parse_check_request
from extauthz.response import MODEL_VERSION_HEADER
from extauthz.types import Denied, PolicyDecision, Status
from tests.unit.checkrequests import check_request
from tests.unit.test_handler import ALLOW, FakePolicy, handler

BUCKET = StickyBucket(bucket_key(b"pepper-a"))


def test_a_caller_keeps_one_bucket_per_model() -> None:
    assert BUCKET("alice", "digits") == BUCKET("alice", "digits")
    assert 0 <= BUCKET("alice", "digits") < 100


def test_buckets_are_roughly_uniform() -> None:
    counts = Counter(BUCKET(f"user-{i}", "digits") for i in range(20_000))
    assert set(counts) == set(range(100))
    # 200 expected per bucket; 5 sigma (~14) is far below 60
    assert min(counts.values()) > 140 and max(counts.values()) < 260


def test_the_bucket_depends_on_the_key_and_on_the_model() -> None:
    other_key = StickyBucket(bucket_key(b"pepper-b"))
    subjects = [f"user-{i}" for i in range(200)]
    assert [BUCKET(s, "digits") for s in subjects] != [other_key(s, "digits") for s in subjects]
    assert [BUCKET(s, "digits") for s in subjects] != [BUCKET(s, "iris") for s in subjects]
    # the separator: ("ab", "c") and ("a", "bc") are different callers on different models
    assert [BUCKET(f"a{i}b", "c") for i in range(50)] != [BUCKET(f"a{i}", "bc") for i in range(50)]


def test_the_key_is_not_the_pepper() -> None:
    assert bucket_key(b"pepper-a") != b"pepper-a" and len(bucket_key(b"pepper-a")) == 32


def _opa(result: dict) -> PolicyDecision:
    base = {"allow": True, "status": 200, "reason": "ok", "quota": [], "headers": {}}
    return parse_decision({"result": {**base, **result}})


def test_the_decision_carries_the_version() -> None:
    assert _opa({"version": "v2"}).version == "v2"
    assert _opa({"version": ""}).version == ""
    assert _opa({}).version == ""


@pytest.mark.parametrize(
    "bad", ["../v1", "v1/infer", "v1\r\nx-evil: 1", 7, ["v1"], "-v1", "v" * 65]
)
def test_a_version_that_is_no_version_name_fails_closed(bad: object) -> None:
    with pytest.raises(Denied) as denied:
        _opa({"version": bad})
    assert denied.value.status is Status.UNAVAILABLE


def test_a_denial_never_carries_a_version() -> None:
    got = parse_decision(
        {"result": {"allow": False, "status": 403, "reason": "x", "version": "v2"}}
    )
    assert got.version == ""


def _set_headers(resp) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {o.header.key: o.header.value for o in resp.ok_response.headers}


async def test_the_allow_names_the_version_and_overwrites_the_clients() -> None:
    policy = FakePolicy(replace(ALLOW, version="v2"))
    h, log = handler(policy=policy)
    sent = {"x-api-key": "eak_x", MODEL_VERSION_HEADER: "v1"}
    resp = await h.check(check_request(headers=sent))
    assert _set_headers(resp)[MODEL_VERSION_HEADER] == "v2"
    assert MODEL_VERSION_HEADER not in resp.ok_response.headers_to_remove
    option = next(o for o in resp.ok_response.headers if o.header.key == MODEL_VERSION_HEADER)
    assert option.append_action == option.OVERWRITE_IF_EXISTS_OR_ADD
    view, decision = log.records[0]
    assert decision_record(view, decision, 1)["version"] == "v2"


async def test_an_unversioned_model_strips_a_client_sent_version() -> None:
    policy = FakePolicy(
        replace(ALLOW, headers=ALLOW.headers + ((MODEL_VERSION_HEADER, "v9"),))
    )  # nor may the policy's headers name one: only its `version` does
    h, log = handler(policy=policy)
    resp = await h.check(check_request(headers={"x-api-key": "eak_x", MODEL_VERSION_HEADER: "v2"}))
    assert MODEL_VERSION_HEADER not in _set_headers(resp)
    assert MODEL_VERSION_HEADER in resp.ok_response.headers_to_remove
    view, decision = log.records[0]
    assert decision_record(view, decision, 1)["version"] is None


async def test_a_denied_decision_logs_no_version() -> None:
    h, log = handler(policy=FakePolicy(PolicyDecision(False, 403, "version_not_allowed")))
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.denied_response.status.code == 403
    view, decision = log.records[0]
    assert decision_record(view, decision, 1)["version"] is None


async def test_the_engine_puts_the_bucket_in_the_input() -> None:
    from extauthz.policy.cache import DecisionCache
    from extauthz.policy.engine import PolicyEngine
    from tests.unit.test_handler import ALICE

    seen: list[dict] = []

    class Opa:
        async def decide(self, policy_input: dict, path: str = "") -> PolicyDecision:
            seen.append(policy_input)
            return ALLOW

    class Watcher:
        def current(self) -> str:
            return "rev"

    engine = PolicyEngine(Opa(), Watcher(), DecisionCache(0, "t"), bucket=BUCKET)  # type: ignore[arg-type]
    await engine.decide(parse_check_request(check_request(), 1024), ALICE)
    await engine.decide(parse_check_request(check_request("GET", "/healthz"), 1024), ALICE)
    assert seen[0]["request"]["bucket"] == BUCKET("alice", "digits")
    assert seen[1]["request"]["bucket"] == 0  # no model, no bucket


def test_remembered_buckets_are_the_computed_ones_and_bounded() -> None:
    small = StickyBucket(bucket_key(b"pepper-a"), size=8)
    got = [small(f"user-{i}", "digits") for i in range(50)]
    assert got == [BUCKET.compute(f"user-{i}", "digits") for i in range(50)]
    assert got == [small(f"user-{i}", "digits") for i in range(50)]
    assert len(small._seen) <= 8
