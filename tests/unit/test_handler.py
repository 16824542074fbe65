"""The handler sequences the stages; each outcome maps to one response. Fakes only here."""

from __future__ import annotations

from typing import Any

import pytest

from extauthz.handler import CheckHandler
from extauthz.policy.input import build_input
from extauthz.response import BODIES
from extauthz.types import (
    Denied,
    LimitResult,
    PolicyDecision,
    Principal,
    Reason,
    RequestView,
    Status,
    Window,
    WindowState,
)
from tests.unit.checkrequests import check_request

ALICE = Principal(
    "alice", ("analyst",), ("vision",), "standard", "api_key", "k1", "ea:{key:k1}:key"
)
QUOTA = (Window("minute", 5, 60),)


class FakeAuthn:
    def __init__(self, result: Principal | Exception) -> None:
        self.result = result

    async def authenticate(self, view: RequestView) -> Principal:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakePolicy:
    def __init__(self, result: PolicyDecision | Exception) -> None:
        self.result = result
        self.inputs: list[dict[str, Any]] = []

    async def decide(self, view: RequestView, principal: Principal) -> PolicyDecision:
        self.inputs.append(build_input(view, principal))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakeLimiter:
    def __init__(self, result: LimitResult | Exception) -> None:
        self.result = result
        self.calls = 0

    async def check(self, principal: Principal, quota: tuple[Window, ...]) -> LimitResult:
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakeLog:
    def __init__(self) -> None:
        self.records: list[tuple[RequestView, Any]] = []

    def record(self, view: RequestView, decision: Any, duration_ns: int) -> None:
        self.records.append((view, decision))


ALLOW = PolicyDecision(True, 200, "ok", QUOTA, (("x-extauthz-tier", "standard"), ("x-evil", "1")))
ADMIT = LimitResult(True, Reason.OK, (WindowState(QUOTA[0], 4, 60),))


def handler(authn=None, policy=None, limiter=None):  # type: ignore[no-untyped-def]
    log = FakeLog()
    h = CheckHandler(
        FakeAuthn(ALICE) if authn is None else authn,
        FakePolicy(ALLOW) if policy is None else policy,
        FakeLimiter(ADMIT) if limiter is None else limiter,
        log,  # type: ignore[arg-type]
        max_body_bytes=1024,
    )
    return h, log


async def test_allow_path() -> None:
    policy = FakePolicy(ALLOW)
    h, log = handler(policy=policy)
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.status.code == 0
    set_headers = {o.header.key: o.header.value for o in resp.ok_response.headers}
    assert set_headers["x-extauthz-subject"] == "alice"
    assert set_headers["x-extauthz-tier"] == "standard"
    assert "x-evil" not in set_headers  # policy may only add x-extauthz-* headers
    assert policy.inputs[0]["request"]["model"] == "digits"
    assert policy.inputs[0]["principal"]["subject"] == "alice"
    assert log.records[0][1].reason is Reason.OK


@pytest.mark.parametrize(
    ("authn", "policy", "limiter", "status", "reason", "limiter_calls"),
    [
        (
            Denied(Status.UNAUTHENTICATED, Reason.UNKNOWN_KEY),
            None,
            None,
            401,
            Reason.UNKNOWN_KEY,
            0,
        ),
        (None, PolicyDecision(False, 403, "project_mismatch"), None, 403, Reason.POLICY_DENY, 0),
        (
            None,
            Denied(Status.UNAVAILABLE, Reason.OPA_UNAVAILABLE),
            None,
            503,
            Reason.OPA_UNAVAILABLE,
            0,
        ),
        (None, None, LimitResult(False, Reason.RATE_LIMITED, (), 7), 429, Reason.RATE_LIMITED, 1),
        (
            None,
            None,
            Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE),
            503,
            Reason.REDIS_UNAVAILABLE,
            1,
        ),
        (None, None, RuntimeError("bug"), 503, Reason.INTERNAL_ERROR, 1),
    ],
)
async def test_denials(authn, policy, limiter, status, reason, limiter_calls) -> None:  # type: ignore[no-untyped-def]
    lim = FakeLimiter(ADMIT if limiter is None else limiter)
    h, log = handler(
        authn=None if authn is None else FakeAuthn(authn),
        policy=None if policy is None else FakePolicy(policy),
        limiter=lim,
    )
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.denied_response.status.code == status
    assert lim.calls == limiter_calls
    decision = log.records[0][1]
    assert decision.reason is reason
    assert resp.denied_response.body.encode() == BODIES[Status(status)]  # nothing more
