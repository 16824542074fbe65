"""The stages the handler sequences (handler.py), stated as Protocols: what the handler may
call and nothing more. The concrete classes are named only in wiring.py; the unit-test fakes
are checked against these signatures (tests/unit/test_stages.py), so neither can drift."""

from __future__ import annotations

from typing import Any, Protocol

from extauthz.types import (
    Decision,
    LimitResult,
    PolicyDecision,
    Principal,
    RequestView,
    Window,
)


class Authenticator(Protocol):
    """Stage 2 (authn/authenticator.py): credentials → Principal, or Denied(401/503)."""

    async def authenticate(self, view: RequestView) -> Principal: ...


class PolicyEngine(Protocol):
    """Stage 3 (policy/engine.py): the policy's decision for one request; Denied(503) when OPA
    cannot answer."""

    async def decide(self, view: RequestView, principal: Principal) -> PolicyDecision: ...


class PolicyQuery(Protocol):
    """What the policy engine asks of OPA on a cache miss (policy/opa.py): one POST."""

    async def decide(self, policy_input: dict[str, Any], path: str = "") -> PolicyDecision: ...


class LimitStage(Protocol):
    """The limiter's calls from the handler (limits/limiter.py): the source guard before
    authentication and before the policy, the decision's state check, and the outcome fed back."""

    def precheck(self, view: RequestView) -> None: ...

    async def auth_failed(self, view: RequestView) -> None: ...

    def admit(self, principal: Principal) -> None: ...

    async def policy_denied(self, view: RequestView, principal: Principal) -> None: ...

    async def check(
        self,
        principal: Principal,
        quota: tuple[Window, ...],
        view: RequestView,
        policy: PolicyDecision,
    ) -> LimitResult: ...

    def observe(self, decision: Decision, view: RequestView) -> None: ...


class DecisionLog(Protocol):
    """After the response (decisionlog.py): one record per decision, written off the path."""

    def record(self, view: RequestView, decision: Decision, duration_ns: int) -> None: ...

    @property
    def refusing(self) -> bool:
        """Decisions must be refused: the audit trail is required and cannot record."""
        ...


class QueryEvents(Protocol):
    """After an allowed inference decision (analytics/events.py): queue its query event for the
    analytics stream. Synchronous and O(1): it never waits on Redis."""

    def emit(self, view: RequestView, decision: Decision) -> None: ...


STAGES: tuple[type, ...] = (
    Authenticator,
    PolicyEngine,
    PolicyQuery,
    LimitStage,
    DecisionLog,
    QueryEvents,
)
