"""One decision's plan for Redis: every key the state check reads or writes (credential and
device state, quarantine flags, DPoP jti, risk, strikes, windows), how it splits into one call
per Cluster slot, and the script's arguments (codec.CheckArgs). Pure: no I/O."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from redis.crc import key_slot

from extauthz.limits.codec import CheckArgs, CheckWindow, Strike
from extauthz.store.schema import (
    OWN_DIMENSIONS,
    SUB_BUCKETS,
    counter_key,
    device_tag,
    dimension_values,
    prefix_tag,
    quarantine_key,
    risk_key,
    strike_key,
    subject_tag,
)
from extauthz.types import (
    Denied,
    LimitResult,
    PolicyDecision,
    Principal,
    Reason,
    Status,
    Window,
    WindowState,
)


@dataclass(slots=True)
class PlanWindow:
    window: Window  # as the policy gave it, limit scaled by the threat level
    key: str
    own: bool


@dataclass(slots=True)
class Call:
    """One script call: all of a decision's keys (single Redis), or those of one slot."""

    state: list[int] = field(default_factory=list)  # indices into Plan.state
    blocks: list[int] = field(default_factory=list)  # indices into Plan.blocks
    singles: list[str] = field(default_factory=list)
    risk: str = ""
    strike: Strike | None = None
    windows: list[int] = field(default_factory=list)  # indices into Plan.windows


@dataclass(slots=True)
class Plan:
    subject: str
    state: list[tuple[str, Reason]]
    blocks: list[tuple[str, str]]  # (quarantine key, kind)
    singles: list[str]
    single_ttl_ms: int
    risk: str
    strike: Strike | None
    windows: list[PlanWindow]


def build_plan(
    c: Any,
    level: str,
    principal: Principal,
    quota: tuple[Window, ...],
    source: str,
    model: str,
    policy: PolicyDecision,
) -> Plan:
    """Every key one decision reads or writes in Redis, and its windows scaled by the threat
    level (`c`: the LimiterConfig)."""
    dims = dimension_values(principal, source, model, policy.project)
    factor = 1.0
    if level != "normal":
        table = dict(policy.throttle) if policy.throttle else {}
        factor = table.get(level, c.threat_factors.get(level, 1.0))
    windows = []
    for w in quota:
        key = counter_key(dims, w)
        if key is None:
            continue
        if factor != 1.0 and w.limit >= 1:
            w = replace(w, limit=max(1, math.floor(w.limit * factor)))
        windows.append(PlanWindow(w, key, bool(OWN_DIMENSIONS.intersection(w.key))))
    state = [(principal.state_key, Reason.KEY_REVOKED)] if principal.state_key else []
    device = principal.device
    if device.state_key:
        state.append((device.state_key, Reason.DEVICE_REVOKED))
    blocks = [(quarantine_key(subject_tag(principal.subject)), "subject")]
    if device.thumbprint:
        blocks.append((quarantine_key(device_tag(device.thumbprint)), "device"))
    if source:
        blocks.append((quarantine_key(prefix_tag(source)), "prefix"))
    own = any(w.own for w in windows)
    strike = None
    if own and c.strikes > 0:
        strikes = strike_key(principal.subject)
        strike = Strike(strikes, strikes + ":guard", blocks[0][0])
    return Plan(
        subject=principal.subject,
        state=state,
        blocks=blocks,
        singles=[device.replay_key] if device.replay_key else [],
        single_ttl_ms=device.replay_ttl * 1000,
        risk=risk_key(principal.subject) if own else "",
        strike=strike,
        windows=windows,
    )


def check_args(c: Any, plan: Plan, call: Call, now_ms: int) -> CheckArgs:
    """The arguments of check_and_consume.lua for one call (`c`: the LimiterConfig)."""
    return CheckArgs(
        now_ms=now_ms,
        state=[plan.state[i][0] for i in call.state],
        blocks=[plan.blocks[i][0] for i in call.blocks],
        singles=call.singles,
        single_ttl_ms=plan.single_ttl_ms,
        risk=call.risk,
        strike=call.strike,
        strikes=c.strikes,
        strike_period_ms=c.strike_period * 1000,
        quarantine_ms=c.strike_quarantine * 1000,
        subject=plan.subject,
        cause=f"strikes: over its limits {c.strikes} times in {c.strike_period} s",
        sub_buckets=SUB_BUCKETS,
        windows=[
            CheckWindow(w.key, w.window.limit, w.window.window * 1000, w.own)
            for w in [plan.windows[i] for i in call.windows]
        ],
    )


def whole(plan: Plan) -> Call:
    return Call(
        state=list(range(len(plan.state))),
        blocks=list(range(len(plan.blocks))),
        singles=list(plan.singles),
        risk=plan.risk,
        strike=plan.strike,
        windows=list(range(len(plan.windows))),
    )


def by_slot(plan: Plan) -> list[Call]:
    """The plan as one call per cluster slot (keys of one call share a slot)."""
    calls: dict[int, Call] = {}

    def call(key: str) -> Call:
        return calls.setdefault(key_slot(key.encode()), Call())

    for i, (key, _) in enumerate(plan.state):
        call(key).state.append(i)
    for i, (key, _) in enumerate(plan.blocks):
        call(key).blocks.append(i)
    for key in plan.singles:
        call(key).singles.append(key)
    if plan.risk:
        call(plan.risk).risk = plan.risk
    if plan.strike:
        call(plan.strike.counter).strike = plan.strike
    for i, w in enumerate(plan.windows):
        call(w.key).windows.append(i)
    return list(calls.values())


def quarantined(seconds: float, kind: str, windows: tuple[WindowState, ...] = ()) -> Denied:
    retry = ceil_s(seconds * 1000)
    result = LimitResult(
        allowed=False,
        reason=Reason.QUARANTINED,
        windows=windows,
        retry_after=retry,
        detail=f"quarantine {kind}",
    )
    return Denied(Status.RATE_LIMITED, Reason.QUARANTINED, f"quarantine {kind}", limits=result)


def ceil_s(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))
