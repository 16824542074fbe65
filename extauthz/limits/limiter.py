"""Stage 4: the decision's state check — one Lua call per Redis slot, one round trip.

Algorithm. Each window is a sub-bucketed sliding window (`keys.SUB_BUCKETS` buckets per
window; every bucket overlapping the trailing window counts in full): no trailing window ever
holds more than `limit` admitted requests; measured under-admission against an exact sliding
log is 0.3-2 % (bench/limiter_accuracy.py). Retry-After comes from the same counts, so a retry
at that moment is admitted unless others took the room first.

Single Redis: every key of the decision — the key record, quarantine flags of the subject,
device and source prefix, the DPoP jti, the subject's risk multiplier and strike counter, every
window — goes into ONE EVALSHA, whatever the hash tags. Nothing is counted unless all pass.

Cluster: keys are grouped by slot, one EVALSHA per slot, all sent at once (one round trip in
parallel). Each slot checks and consumes atomically; if any slot denies, the slots that
consumed are refunded (refund.lua, a second round trip on denials only). Between consume and
refund a concurrent request may see a count one too high and be denied: the race can only
under-admit, never over-admit.

Before Redis, the local over-limit cache (memory.OverLimitCache) denies in-process what a
recent reply said is over limit or quarantined. If Redis fails: 503 (fail closed), unless the
policy says `fail_mode: open` for the model — then the in-process fallback limiter counts, per
worker (with N workers at most N x limit per window, plus what Redis had already counted), and
enforces from what the worker learned from Redis (known.KnownState): a key or device must have
been seen active within `fallback_max_age` and not revoked since, known quarantines still hold,
and a DPoP proof jti this worker has seen is a replay (with several workers a proof cannot be
checked against the others': refused).

Policy denials count too (policy_denial.lua, one call on the 403 path only): past a limit per
subject or per source prefix the subject or prefix is quarantined for a short time, and its
requests are answered in-process (429) before OPA is asked.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from extauthz.clock import Clock, system_clock
from extauthz.limits.keys import (
    OWN_DIMENSIONS,
    SUB_BUCKETS,
    auth_failure_key,
    client_address,
    counter_key,
    device_tag,
    dimension_values,
    hash_tag,
    policy_denial_key,
    prefix_tag,
    quarantine_key,
    risk_key,
    source_prefix,
    strike_key,
    subject_tag,
)
from extauthz.limits.known import KnownState
from extauthz.limits.memory import MemoryWindows, OverLimitCache
from extauthz.limits.throttle import ThreatWatcher
from extauthz.metrics import (
    DEGRADED,
    LIMITER_FALLBACK,
    LIMITER_LOCAL,
    LIMITER_SECONDS,
    POLICY_DENIALS,
    QUARANTINES,
)
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

DEFAULT_THREAT_FACTORS = {"elevated": 0.5, "high": 0.25, "critical": 0.1}


def load_lua(name: str) -> str:
    return resources.files("extauthz.limits").joinpath("lua", name).read_text()


@dataclass(frozen=True)
class LimiterConfig:
    """The limiter's settings (settings.py has each one's description)."""

    v4_bits: int = 24
    v6_bits: int = 56
    trusted_hops: int = 0
    auth_failure_limit: int = 30  # per source prefix and auth_failure_window; 0: not counted
    auth_failure_window: int = 60
    auth_failure_quarantine: int = 300
    strikes: int = 10  # a subject over its own limits this often ...; 0: no auto-quarantine
    strike_period: int = 600  # ... within this many seconds ...
    strike_quarantine: int = 900  # ... is quarantined this long
    local_cache_size: int = 100_000
    local_cache_max_age: float = 2.0
    threat_factors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THREAT_FACTORS))
    fallback_size: int = 100_000
    fallback_max_age: float = 60.0  # a key/device seen active longer ago: refused in fallback
    single_worker: bool = True  # only then is this worker's memory of DPoP jtis complete
    policy_denial_limit: int = 60  # per subject and policy_denial_window; 0: not counted
    policy_denial_prefix_limit: int = 600  # per source prefix; 0: not counted
    policy_denial_window: int = 60
    policy_denial_quarantine: int = 60

    @classmethod
    def from_settings(cls, s: Any) -> LimiterConfig:
        from extauthz.limits.throttle import parse_factors

        return cls(
            v4_bits=s.source_prefix_v4,
            v6_bits=s.source_prefix_v6,
            trusted_hops=s.trusted_hops,
            auth_failure_limit=s.auth_failure_limit,
            auth_failure_window=s.auth_failure_window,
            auth_failure_quarantine=s.auth_failure_quarantine,
            strikes=s.quarantine_strikes,
            strike_period=s.quarantine_strike_period,
            strike_quarantine=s.quarantine_ttl,
            local_cache_size=s.overlimit_cache_size,
            local_cache_max_age=s.overlimit_cache_max_age,
            threat_factors=parse_factors(s.threat_factors),
            fallback_max_age=s.redis_fallback_max_age,
            single_worker=s.workers <= 1,
            policy_denial_limit=s.policy_denial_limit,
            policy_denial_prefix_limit=s.policy_denial_prefix_limit,
            policy_denial_window=s.policy_denial_window,
            policy_denial_quarantine=s.policy_denial_quarantine,
        )


@dataclass(slots=True)
class _Window:
    window: Window  # as the policy gave it, limit scaled by the threat level
    key: str
    own: bool


@dataclass(slots=True)
class _Call:
    """One script call: all of a decision's keys (single Redis), or those of one slot."""

    state: list[int] = field(default_factory=list)  # indices into _Plan.state
    blocks: list[int] = field(default_factory=list)  # indices into _Plan.blocks
    singles: list[str] = field(default_factory=list)
    risk: str = ""
    strike: tuple[str, str, str] | None = None
    windows: list[int] = field(default_factory=list)  # indices into _Plan.windows


@dataclass(slots=True)
class _Plan:
    subject: str
    state: list[tuple[str, Reason]]
    blocks: list[tuple[str, str]]  # (quarantine key, kind)
    singles: list[str]
    single_ttl_ms: int
    risk: str
    strike: tuple[str, str, str] | None  # strike counter, its guard, the quarantine flag
    windows: list[_Window]


class Limiter:
    """Checks every window of a decision's quota, the credential's and device's state and the
    quarantine flags; consumes only on a full pass. Redis errors and timeouts raise Denied(503)
    unless the model is fail-open."""

    def __init__(
        self,
        redis: Any,
        timeout: float,
        clock: Clock = system_clock,
        config: LimiterConfig | None = None,
        threat: ThreatWatcher | None = None,
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._clock = clock
        self._config = config or LimiterConfig()
        self._cluster = isinstance(redis, RedisCluster)
        self._script = redis.register_script(load_lua("check_and_consume.lua"))
        self._refund = redis.register_script(load_lua("refund.lua"))
        self._auth_failure = redis.register_script(load_lua("auth_failure.lua"))
        self._policy_denial = redis.register_script(load_lua("policy_denial.lua"))
        self.local = OverLimitCache(self._config.local_cache_size, self._config.local_cache_max_age)
        self.fallback = MemoryWindows(self._config.fallback_size)
        self.known = KnownState(self._config.fallback_size)
        self.threat = threat or ThreatWatcher(redis, clock=clock)

    def observe(self, decision: Decision, view: RequestView) -> None:
        """One decision's outcome, for the automatic threat level: only authenticated,
        not quarantined decisions count (throttle.RefusedSources)."""
        principal = decision.principal
        if principal is None or decision.reason is Reason.QUARANTINED:
            return
        status = int(decision.status)
        if status not in (200, 403, 429):
            return
        self.threat.record(hash_tag(principal), self.source_of(view), status != 200)

    async def start(self) -> None:
        await self.threat.poll_once()
        self.threat.start()

    async def close(self) -> None:
        await self.threat.stop()

    # ---- the source network (failed authentications, quarantine, source_prefix windows)
    def source_of(self, view: RequestView) -> str:
        c = self._config
        address = client_address(
            view.source_ip, view.headers.get("x-forwarded-for", ""), c.trusted_hops
        )
        return source_prefix(address, c.v4_bits, c.v6_bits)

    def precheck(self, view: RequestView) -> None:
        """Before authentication, in-process only: a source prefix this worker knows to be
        quarantined (e.g. for failed authentications) gets 429 without further work."""
        if not self.local:
            return
        now = self._clock()
        key = quarantine_key(prefix_tag(self.source_of(view)))
        until = self.local.until(key, now)
        if until is not None:
            LIMITER_LOCAL.labels("quarantine").inc()
            raise _quarantined(until - now, "prefix (local)")

    async def auth_failed(self, view: RequestView) -> None:
        """A request failed authentication: count it for its source prefix (one Redis call on
        the 401 path only). Raises Denied(429) when the prefix is now quarantined."""
        c = self._config
        if c.auth_failure_limit <= 0:
            return
        now = self._clock()
        prefix = self.source_of(view)
        qkey = quarantine_key(prefix_tag(prefix))
        args = [
            int(now * 1000),
            c.auth_failure_limit,
            c.auth_failure_window * 1000,
            SUB_BUCKETS,
            c.auth_failure_quarantine * 1000,
            prefix,
            f"auth_failures: more than {c.auth_failure_limit} in {c.auth_failure_window} s",
        ]
        try:
            async with asyncio.timeout(self._timeout):
                blocked, value = await self._auth_failure(
                    keys=[auth_failure_key(prefix, c.auth_failure_window), qkey], args=args
                )
        except (RedisError, OSError, TimeoutError):
            return  # the 401 stands; counting is best effort
        if int(blocked):
            until = now + int(value) / 1000
            self.local.put(qkey, until, now)
            self.known.quarantine(qkey, until)
            QUARANTINES.labels("prefix").inc()
            raise _quarantined(until - now, "prefix")

    # ---- policy denials (a tenant must not make the gateway ask OPA without limit)
    def admit(self, principal: Principal) -> None:
        """Before the policy, in-process only: a subject this worker knows to be quarantined
        (e.g. for too many policy denials) gets 429 without an OPA query."""
        if not self.local:
            return
        now = self._clock()
        until = self.local.until(quarantine_key(subject_tag(principal.subject)), now)
        if until is not None:
            LIMITER_LOCAL.labels("quarantine").inc()
            raise _quarantined(until - now, "subject (local)")

    async def policy_denied(self, view: RequestView, principal: Principal) -> None:
        """The policy refused a request: count it for the subject and the source prefix (one
        Redis call on the 403 path only). Raises Denied(429) when one of them is now (or
        already was) quarantined."""
        c = self._config
        pairs = []
        if c.policy_denial_limit > 0:
            tag = subject_tag(principal.subject)
            pairs.append((tag, c.policy_denial_limit, "subject", principal.subject))
        if c.policy_denial_prefix_limit > 0:
            prefix = self.source_of(view)
            pairs.append((prefix_tag(prefix), c.policy_denial_prefix_limit, "prefix", prefix))
        if not pairs:
            return
        now = self._clock()
        keys: list[str] = []
        args: list[Any] = [
            int(now * 1000),
            SUB_BUCKETS,
            c.policy_denial_window * 1000,
            c.policy_denial_quarantine * 1000,
            f"policy_denials: more than the limit in {c.policy_denial_window} s",
        ]
        for tag, limit, kind, target in pairs:
            keys += [policy_denial_key(tag, c.policy_denial_window), quarantine_key(tag)]
            args += [limit, kind, target]
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster:  # one call per pair: each pair shares its tag's slot
                    replies = await asyncio.gather(
                        *(
                            self._policy_denial(
                                keys=keys[2 * i : 2 * i + 2],
                                args=args[:5] + args[5 + 3 * i : 8 + 3 * i],
                            )
                            for i in range(len(pairs))
                        )
                    )
                    hits = [(i + 1, r) for i, r in enumerate(replies) if int(r[0])]
                    blocked, value = (hits[0][0], hits[0][1][1]) if hits else (0, 0)
                else:
                    blocked, value = await self._policy_denial(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError):
            POLICY_DENIALS.labels("error").inc()
            return  # the 403 stands; counting is best effort
        if not int(blocked):
            POLICY_DENIALS.labels("counted").inc()
            return
        _, _, kind, _ = pairs[int(blocked) - 1]
        qkey = keys[2 * int(blocked) - 1]
        until = now + int(value) / 1000
        self.local.put(qkey, until, now)
        self.known.quarantine(qkey, until)
        POLICY_DENIALS.labels("quarantined").inc()
        QUARANTINES.labels(kind).inc()
        raise _quarantined(until - now, kind)

    # ---- the decision's state check
    async def check(
        self,
        principal: Principal,
        quota: tuple[Window, ...],
        view: RequestView | None = None,
        policy: PolicyDecision | None = None,
    ) -> LimitResult:
        now = self._clock()
        now_ms = int(now * 1000)
        plan = self._plan(principal, quota, view, policy)
        local = self._local_verdict(plan, now)
        if local is not None:
            return local
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster:
                    result = await self._run_cluster(plan, now_ms)
                else:
                    whole = _whole(plan)
                    reply = await self._call(plan, whole, now_ms)
                    result = self._interpret(plan, [whole], [reply], now)
        except (RedisError, OSError, TimeoutError) as exc:
            if policy is not None and policy.fail_mode == "open":
                return self._fallback(plan, now_ms)
            raise Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, type(exc).__name__) from exc
        finally:
            LIMITER_SECONDS.observe(time.perf_counter() - started)
        return result

    def _plan(
        self,
        principal: Principal,
        quota: tuple[Window, ...],
        view: RequestView | None,
        policy: PolicyDecision | None,
    ) -> _Plan:
        c = self._config
        source = self.source_of(view) if view is not None else ""
        model = view.route.name if view is not None else ""
        dims = dimension_values(principal, source, model, policy.project if policy else "")
        factor = 1.0
        level = self.threat.level
        if level != "normal":
            table = dict(policy.throttle) if policy is not None and policy.throttle else {}
            factor = table.get(level, c.threat_factors.get(level, 1.0))
        windows = []
        for w in quota:
            key = counter_key(dims, w)
            if key is None:
                continue
            if factor != 1.0 and w.limit >= 1:
                w = replace(w, limit=max(1, math.floor(w.limit * factor)))
            windows.append(_Window(w, key, bool(OWN_DIMENSIONS.intersection(w.key))))
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
            strike = (strikes, strikes + ":guard", blocks[0][0])
        return _Plan(
            subject=principal.subject,
            state=state,
            blocks=blocks,
            singles=[device.replay_key] if device.replay_key else [],
            single_ttl_ms=device.replay_ttl * 1000,
            risk=risk_key(principal.subject) if own else "",
            strike=strike,
            windows=windows,
        )

    def _local_verdict(self, plan: _Plan, now: float) -> LimitResult | None:
        """Deny in-process what this worker knows is quarantined or over limit."""
        local = self.local
        if not local:
            return None
        for key, kind in plan.blocks:
            until = local.until(key, now)
            if until is not None:
                LIMITER_LOCAL.labels("quarantine").inc()
                return _quarantined(until - now, f"{kind} (local)").limits
        if plan.singles:
            return None  # a DPoP proof is spent in Redis even when a window then denies
        late = None
        for w in plan.windows:
            until = local.until((w.key, w.window.limit), now)
            if until is not None and (late is None or until > late[0]):
                late = (until, w)
        if late is None:
            return None
        LIMITER_LOCAL.labels("window").inc()
        until, w = late
        retry = _ceil_s((until - now) * 1000)
        return LimitResult(
            allowed=False,
            reason=Reason.RATE_LIMITED,
            windows=(WindowState(w.window, 0, retry),),
            retry_after=retry,
            detail=f"window {w.window.name} (local)",
        )

    def _args(self, plan: _Plan, call: _Call, now_ms: int) -> tuple[list[str], list[Any]]:
        c = self._config
        keys = [plan.state[i][0] for i in call.state]
        keys += [plan.blocks[i][0] for i in call.blocks]
        keys += call.singles
        if call.risk:
            keys.append(call.risk)
        if call.strike:
            keys.extend(call.strike)
        args: list[Any] = [
            now_ms,
            len(call.state),
            len(call.blocks),
            len(call.singles),
            plan.single_ttl_ms,
            1 if call.risk else 0,
            1 if call.strike else 0,
            c.strikes,
            c.strike_period * 1000,
            c.strike_quarantine * 1000,
            plan.subject,
            f"strikes: over its limits {c.strikes} times in {c.strike_period} s",
            SUB_BUCKETS,
        ]
        for i in call.windows:
            w = plan.windows[i]
            keys.append(w.key)
            args.extend((w.window.limit, w.window.window * 1000, 1 if w.own else 0))
        return keys, args

    async def _call(self, plan: _Plan, call: _Call, now_ms: int) -> list[int]:
        keys, args = self._args(plan, call, now_ms)
        return await self._script(keys=keys, args=args)

    async def _run_cluster(self, plan: _Plan, now_ms: int) -> LimitResult:
        calls = _by_slot(plan)
        replies = await asyncio.gather(*(self._call(plan, call, now_ms) for call in calls))
        if any(int(r[0]) != 1 for r in replies):
            refunds = [
                (call, reply)
                for call, reply in zip(calls, replies, strict=True)
                if int(reply[0]) == 1
            ]
            await asyncio.gather(
                *(self._give_back(plan, call, now_ms) for call, _ in refunds if call.windows)
            )
        return self._interpret(plan, calls, replies, self._clock())

    async def _give_back(self, plan: _Plan, call: _Call, now_ms: int) -> None:
        keys = [plan.windows[i].key for i in call.windows]
        fields = [
            now_ms // (plan.windows[i].window.window * 1000 // SUB_BUCKETS) for i in call.windows
        ]
        await self._refund(keys=keys, args=fields)

    def _interpret(
        self, plan: _Plan, calls: list[_Call], replies: list[list[Any]], now: float
    ) -> LimitResult:
        """The replies (one per call) → LimitResult, or Denied(401) when a credential is no
        longer active or a single-use value was seen before. Feeds the local cache."""
        states: dict[int, WindowState] = {}
        denied_by: list[tuple[int, str]] = []
        verdict, retry_ms = 1, 0
        # a slot that counted while another denied is refunded: report it as not counted
        refunded = any(int(raw[0]) != 1 for raw in replies)
        state_denial: Denied | None = None
        block: tuple[int, str] | None = None
        for call, raw in zip(calls, replies, strict=True):
            v = int(raw[0])
            self._learn(plan, call, v, raw, now)
            if v == -1:
                reason = plan.state[call.state[int(raw[1]) - 1]][1]
                state_denial = Denied(Status.UNAUTHENTICATED, reason, "state check")
                continue
            if v == -2:
                state_denial = state_denial or Denied(
                    Status.UNAUTHENTICATED, Reason.DPOP_REPLAY, "state check"
                )
                continue
            if v == -3:
                key, kind = plan.blocks[call.blocks[int(raw[1]) - 1]]
                ms = int(raw[2])
                self.local.put(key, now + ms / 1000, now)
                if block is None or ms > block[0]:
                    block = (ms, kind)
                continue
            if v == 0:
                verdict = 0
                retry_ms = max(retry_ms, int(raw[1]))
                if int(raw[2]):
                    QUARANTINES.labels("subject").inc()
                    self.local.put(plan.blocks[0][0], now + int(raw[1]) / 1000, now)
                    self.known.quarantine(plan.blocks[0][0], now + int(raw[1]) / 1000)
            for j, i in enumerate(call.windows):
                remaining, reset, limit, denied = (int(x) for x in raw[3 + 4 * j : 7 + 4 * j])
                if refunded and v == 1:
                    remaining = min(limit, remaining + 1)
                w = plan.windows[i]
                window = w.window if limit == w.window.limit else replace(w.window, limit=limit)
                states[i] = WindowState(window, remaining, _ceil_s(reset))
                if denied:
                    denied_by.append((reset, w.window.name))
                    self.local.put((w.key, w.window.limit), now + reset / 1000, now)
        if state_denial is not None:
            raise state_denial
        ordered = tuple(states[i] for i in sorted(states))
        if block is not None:
            ms, kind = block
            return _quarantined(ms / 1000, kind, ordered).limits  # type: ignore[return-value]
        if verdict == 1:
            return LimitResult(allowed=True, reason=Reason.OK, windows=ordered)
        detail = "window " + max(denied_by)[1] if denied_by else "window"
        return LimitResult(
            allowed=False,
            reason=Reason.RATE_LIMITED,
            windows=ordered,
            retry_after=_ceil_s(retry_ms),
            detail=detail,
        )

    def _learn(self, plan: _Plan, call: _Call, v: int, raw: list[Any], now: float) -> None:
        """Remember what Redis said of states, quarantines and jtis, for the fallback."""
        known = self.known
        checked = call.state if v != -1 else call.state[: int(raw[1]) - 1]
        for i in checked:
            known.confirm(plan.state[i][0], now)
        if v == -1:
            known.revoke(plan.state[call.state[int(raw[1]) - 1]][0], now)
        elif v == -3:
            known.quarantine(plan.blocks[call.blocks[int(raw[1]) - 1]][0], now + int(raw[2]) / 1000)
        elif v in (-2, 0, 1):  # the single-use keys were set (or already were: a replay)
            for key in call.singles:
                known.spend(key, now + plan.single_ttl_ms / 1000)

    def _fallback(self, plan: _Plan, now_ms: int) -> LimitResult:
        """Redis is down and the model is fail-open: enforce what this worker knows of states,
        quarantines and jtis (else refuse), then count in its memory."""
        now = now_ms / 1000
        known, c = self.known, self._config
        for key, kind in plan.blocks:
            until = known.quarantined_until(key, now)
            if until is not None:
                DEGRADED.labels("redis", "quarantined").inc()
                raise _quarantined(until - now, f"{kind} (fallback)")
        for key, reason in plan.state:
            active = known.is_active(key, now, c.fallback_max_age)
            if active is False:
                DEGRADED.labels("redis", "revoked").inc()
                raise Denied(Status.UNAUTHENTICATED, reason, "fallback: known revoked")
            if active is None:
                DEGRADED.labels("redis", "state_unknown").inc()
                raise Denied(
                    Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, "fallback: state unknown"
                )
        for key in plan.singles:
            if not c.single_worker:
                DEGRADED.labels("redis", "replay_unknown").inc()
                raise Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, "fallback: jti")
            if known.replayed(key, now):
                DEGRADED.labels("redis", "replay").inc()
                raise Denied(Status.UNAUTHENTICATED, Reason.DPOP_REPLAY, "fallback")
        windows = [(w.key, w.window.limit, w.window.window * 1000) for w in plan.windows]
        admitted, verdicts = self.fallback.check(windows, now_ms, SUB_BUCKETS)
        LIMITER_FALLBACK.labels("allowed" if admitted else "denied").inc()
        DEGRADED.labels("redis", "served" if admitted else "rate_limited").inc()
        for key in plan.singles:  # a proof is good for one attempt, as in Redis
            known.spend(key, now + plan.single_ttl_ms / 1000)
        states = tuple(
            WindowState(
                w.window, max(0, limit - v.used - (1 if admitted else 0)), _ceil_s(v.reset_ms)
            )
            for w, (limit, v) in zip(plan.windows, verdicts, strict=True)
        )
        if admitted:
            return LimitResult(True, Reason.OK, states, detail="fallback")
        retry = _ceil_s(max(v.wait_ms for _, v in verdicts))
        return LimitResult(False, Reason.RATE_LIMITED, states, retry, detail="fallback")


def _whole(plan: _Plan) -> _Call:
    return _Call(
        state=list(range(len(plan.state))),
        blocks=list(range(len(plan.blocks))),
        singles=list(plan.singles),
        risk=plan.risk,
        strike=plan.strike,
        windows=list(range(len(plan.windows))),
    )


def _by_slot(plan: _Plan) -> list[_Call]:
    """The plan as one call per cluster slot (keys of one call share a slot)."""
    calls: dict[int, _Call] = {}

    def call(key: str) -> _Call:
        return calls.setdefault(key_slot(key.encode()), _Call())

    for i, (key, _) in enumerate(plan.state):
        call(key).state.append(i)
    for i, (key, _) in enumerate(plan.blocks):
        call(key).blocks.append(i)
    for key in plan.singles:
        call(key).singles.append(key)
    if plan.risk:
        call(plan.risk).risk = plan.risk
    if plan.strike:
        call(plan.strike[0]).strike = plan.strike
    for i, w in enumerate(plan.windows):
        call(w.key).windows.append(i)
    return list(calls.values())


def _quarantined(seconds: float, kind: str, windows: tuple[WindowState, ...] = ()) -> Denied:
    retry = _ceil_s(seconds * 1000)
    result = LimitResult(
        allowed=False,
        reason=Reason.QUARANTINED,
        windows=windows,
        retry_after=retry,
        detail=f"quarantine {kind}",
    )
    return Denied(Status.RATE_LIMITED, Reason.QUARANTINED, f"quarantine {kind}", limits=result)


def _ceil_s(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))
