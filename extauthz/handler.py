"""Check(): one decision, one call per stage (ARCHITECTURE.md, "One decision"); each stage's
interface is a Protocol in stages.py."""

from __future__ import annotations

import logging
import time
import uuid

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from extauthz.metrics import DECISION_SECONDS, DECISIONS
from extauthz.request import NO_FORWARDING, Forwarding, parse_check_request
from extauthz.response import UPSTREAM_PREFIX, build_response
from extauthz.shaping.plan import CACHE_MODES, merge_degrade
from extauthz.stages import Authenticator, DecisionLog, LimitStage, PolicyEngine, QueryEvents
from extauthz.types import (
    Decision,
    Denied,
    LimitResult,
    PolicyDecision,
    Principal,
    Reason,
    RequestView,
    ResponsePlan,
    Status,
)

log = logging.getLogger(__name__)

_POLICY_STATUSES = {401: Status.UNAUTHENTICATED, 429: Status.RATE_LIMITED, 503: Status.UNAVAILABLE}


class CheckHandler:
    def __init__(
        self,
        authenticator: Authenticator,
        policy: PolicyEngine,
        limiter: LimitStage,
        decision_log: DecisionLog,
        max_body_bytes: int,
        forwarding: Forwarding = NO_FORWARDING,
        events: QueryEvents | None = None,
    ) -> None:
        self._authn = authenticator
        self._policy = policy
        self._limiter = limiter
        self._log = decision_log
        self._max_body = max_body_bytes
        self._forwarding = forwarding  # whose X-Forwarded-For entries name the client
        self._events = events  # the analytics query stream (an append; sent in the background)

    async def check(self, request: CheckRequest) -> CheckResponse:
        started = time.perf_counter_ns()
        view = parse_check_request(request, self._max_body, self._forwarding)
        decision_id = uuid.uuid4().hex
        principal: Principal | None = None
        policy: PolicyDecision | None = None
        try:
            if self._log.refusing:  # the audit trail must record and cannot: serve nothing
                raise Denied(Status.UNAVAILABLE, Reason.AUDIT_UNAVAILABLE)
            self._limiter.precheck(view)  # a source network known to be quarantined: 429 here
            principal = await self._authenticate(view)
            self._limiter.admit(principal)  # a subject known to be quarantined: 429, no OPA
            policy = await self._policy.decide(view, principal)
            if not policy.allow:
                # counted per subject and network: past a limit, 429 before OPA is asked
                await self._limiter.policy_denied(view, principal)
                status = _POLICY_STATUSES.get(policy.status, Status.FORBIDDEN)
                raise Denied(status, Reason.POLICY_DENY)
            limits = await self._limiter.check(principal, policy.quota, view, policy)
            decision = Decision(
                status=Status.OK if limits.allowed else Status.RATE_LIMITED,
                reason=limits.reason,
                decision_id=decision_id,
                principal=principal,
                policy=policy,
                limits=limits,
                upstream_headers=upstream_headers(principal, policy, decision_id),
                extra={"detail": limits.detail},
                plan=response_plan(view, policy, limits),
            )
        except Denied as denied:
            decision = Decision(
                status=denied.status,
                reason=denied.reason,
                decision_id=decision_id,
                principal=principal,
                policy=policy,
                limits=denied.limits,
                extra={"detail": denied.detail},
                denial_headers=denied.headers,
            )
        except Exception:  # fail closed on anything unforeseen, and say so in our own log
            log.exception("decision %s failed", decision_id)
            decision = Decision(Status.UNAVAILABLE, Reason.INTERNAL_ERROR, decision_id, principal)
        response = build_response(decision, view.headers)
        elapsed = time.perf_counter_ns() - started
        self._log.record(view, decision, elapsed)
        DECISIONS.labels(str(int(decision.status)), decision.reason.value).inc()
        self._limiter.observe(decision, view)  # feeds the automatic threat level
        if self._events is not None:
            self._events.emit(view, decision)
        DECISION_SECONDS.observe(elapsed / 1e9)
        return response

    async def _authenticate(self, view: RequestView) -> Principal:
        """Stage 2; a failed attempt also counts against its source network (credential
        stuffing), which may turn the 401 into a 429."""
        try:
            return await self._authn.authenticate(view)
        except Denied as denied:
            if denied.status is Status.UNAUTHENTICATED:
                await self._limiter.auth_failed(view)
            raise


_UNSHAPED = {cache: ResponsePlan(cache=cache) for cache in CACHE_MODES}


def response_plan(view: RequestView, policy: PolicyDecision, limits: LimitResult) -> ResponsePlan:
    """The policy's plan and the subject's degradation level (the stricter wins); only an
    inference answer is shaped, the cache headers apply to every answer."""
    if view.route.action != "infer":
        return _UNSHAPED[policy.plan.cache]
    if limits.degrade:
        return merge_degrade(policy.plan, limits.degrade)
    return policy.plan


def upstream_headers(
    principal: Principal, policy: PolicyDecision, decision_id: str
) -> tuple[tuple[str, str], ...]:
    """Identity headers for the model server. Policy may add x-extauthz-* headers only."""
    extra = tuple((k, v) for k, v in policy.headers if k.startswith(UPSTREAM_PREFIX))
    return (
        ("x-extauthz-subject", principal.subject),
        ("x-extauthz-decision-id", decision_id),
        *extra,
    )
