"""The handler sequences the stages; each outcome maps to one response. Fakes only here."""

from __future__ import annotations

from typing import Any

import pytest

from extauthz.handler import CheckHandler
from extauthz.policy.input import build_input
from extauthz.response import BODIES
from extauthz.types import (
    Decision,
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
    def __init__(
        self,
        result: LimitResult | Exception,
        blocked: Denied | None = None,
        on_auth_failure: Denied | None = None,
    ) -> None:
        self.result = result
        self.blocked = blocked
        self.on_auth_failure = on_auth_failure
        self.calls = 0
        self.auth_failures = 0
        self.observed: list[int] = []
        self.policy_denials = 0

    def observe(self, decision: Decision, view: RequestView) -> None:
        self.observed.append(int(decision.status))

    def admit(self, principal: Principal) -> None:
        pass

    async def policy_denied(self, view: RequestView, principal: Principal) -> None:
        self.policy_denials += 1

    def precheck(self, view: RequestView) -> None:
        if self.blocked is not None:
            raise self.blocked

    async def auth_failed(self, view: RequestView) -> None:
        self.auth_failures += 1
        if self.on_auth_failure is not None:
            raise self.on_auth_failure

    async def check(
        self,
        principal: Principal,
        quota: tuple[Window, ...],
        view: RequestView,
        policy: PolicyDecision,
    ) -> LimitResult:
        self.calls += 1
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class FakeLog:
    def __init__(self) -> None:
        self.records: list[tuple[RequestView, Decision]] = []
        self.refuse = False

    @property
    def refusing(self) -> bool:
        return self.refuse

    def record(self, view: RequestView, decision: Decision, duration_ns: int) -> None:
        self.records.append((view, decision))


ALLOW = PolicyDecision(True, 200, "ok", QUOTA, (("x-extauthz-tier", "standard"), ("x-evil", "1")))
ADMIT = LimitResult(True, Reason.OK, (WindowState(QUOTA[0], 4, 60),))


def handler(authn=None, policy=None, limiter=None):  # type: ignore[no-untyped-def]
    log = FakeLog()
    h = CheckHandler(
        FakeAuthn(ALICE) if authn is None else authn,
        FakePolicy(ALLOW) if policy is None else policy,
        FakeLimiter(ADMIT) if limiter is None else limiter,
        log,
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


QUARANTINED = LimitResult(False, Reason.QUARANTINED, (), 300, "quarantine prefix")


def _headers(resp: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in resp.denied_response.headers}


async def test_a_failed_authentication_is_counted_once_and_stays_401() -> None:
    lim = FakeLimiter(ADMIT)
    h, _ = handler(authn=FakeAuthn(Denied(Status.UNAUTHENTICATED, Reason.UNKNOWN_KEY)), limiter=lim)
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.denied_response.status.code == 401
    assert lim.auth_failures == 1 and lim.calls == 0


async def test_other_denials_are_not_counted_as_failed_authentications() -> None:
    lim = FakeLimiter(ADMIT)
    h, _ = handler(
        authn=FakeAuthn(Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE)), limiter=lim
    )
    await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert lim.auth_failures == 0


async def test_the_failure_that_quarantines_a_prefix_is_a_429_with_retry_after() -> None:
    quarantine = Denied(Status.RATE_LIMITED, Reason.QUARANTINED, "prefix", limits=QUARANTINED)
    lim = FakeLimiter(ADMIT, on_auth_failure=quarantine)
    h, log = handler(
        authn=FakeAuthn(Denied(Status.UNAUTHENTICATED, Reason.UNKNOWN_KEY)), limiter=lim
    )
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.denied_response.status.code == 429
    assert resp.denied_response.body.encode() == BODIES[Status.RATE_LIMITED]
    assert _headers(resp)["retry-after"] == "300"
    assert "www-authenticate" not in _headers(resp)
    assert log.records[0][1].reason is Reason.QUARANTINED


async def test_a_quarantined_source_is_refused_before_authentication() -> None:
    blocked = Denied(Status.RATE_LIMITED, Reason.QUARANTINED, "prefix", limits=QUARANTINED)
    authn = FakeAuthn(AssertionError("must not authenticate"))
    lim = FakeLimiter(ADMIT, blocked=blocked)
    h, _ = handler(authn=authn, limiter=lim)
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.denied_response.status.code == 429
    assert _headers(resp)["retry-after"] == "300"
    assert lim.calls == 0 and lim.auth_failures == 0


async def test_a_quarantined_subject_is_a_generic_429() -> None:
    h, log = handler(limiter=FakeLimiter(QUARANTINED))
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.denied_response.status.code == 429
    assert resp.denied_response.body.encode() == BODIES[Status.RATE_LIMITED]
    assert _headers(resp)["retry-after"] == "300"
    decision = log.records[0][1]
    assert decision.reason is Reason.QUARANTINED
    assert decision.extra["detail"] == "quarantine prefix"


def test_decision_log_names_the_device_and_worker_never_the_credential() -> None:
    import os

    from extauthz.decisionlog import decision_record
    from extauthz.request import parse_check_request
    from extauthz.types import Decision, Device

    device = Device(thumbprint="tp-123", trust="managed")
    bob = Principal(
        "bob", ("clinician",), ("clinical",), "standard", "jwt+dpop", "abc", device=device
    )
    view = parse_check_request(check_request(headers={"authorization": "DPoP secret-token"}), 1024)
    record = decision_record(view, Decision(Status.OK, Reason.OK, "d1", principal=bob), 1500)
    assert record["device"] == "tp-123" and record["device_trust"] == "managed"
    assert record["worker"] == os.getpid()
    assert "secret-token" not in str(record)
    anonymous = decision_record(
        view, Decision(Status.UNAUTHENTICATED, Reason.NO_CREDENTIAL, "d2"), 1
    )
    assert anonymous["device"] is None and anonymous["device_trust"] is None


class FakeEvents:
    """A QueryEvents stage (stages.py) that keeps what it was given."""

    def __init__(self) -> None:
        self.emitted: list[tuple[RequestView, Decision]] = []

    def emit(self, view: RequestView, decision: Decision) -> None:
        self.emitted.append((view, decision))


async def test_every_decision_is_offered_to_the_query_stream_after_its_record() -> None:
    """The handler hands each decision over (the emitter keeps allowed inferences only,
    tests/unit/test_analytics.py); allowed and denied alike, after the decision log."""
    events = FakeEvents()
    for policy, code in ((ALLOW, 0), (PolicyDecision(False, 403, "project_mismatch"), 7)):
        log = FakeLog()
        h = CheckHandler(
            FakeAuthn(ALICE), FakePolicy(policy), FakeLimiter(ADMIT), log, 1024, events=events
        )
        resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
        assert resp.status.code == code
        view, decision = events.emitted[-1]
        assert decision is log.records[-1][1] and view.route.name == "digits"
    assert [d.status for _, d in events.emitted] == [Status.OK, Status.FORBIDDEN]


async def test_an_audit_trail_that_must_record_and_cannot_refuses_every_decision() -> None:
    authn = FakeAuthn(ALICE)
    h, log = handler(authn=authn)
    log.refuse = True
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.denied_response.status.code == 503
    assert b"audit" not in resp.denied_response.body.encode()  # the generic body
    assert log.records[-1][1].reason is Reason.AUDIT_UNAVAILABLE
    log.refuse = False
    resp = await h.check(check_request(headers={"x-api-key": "eak_x"}))
    assert resp.status.code == 0
