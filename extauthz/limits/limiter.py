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

Failed authentications and policy denials count against their sources in guard.py (one call on
the 401 / 403 path only); past a limit the source is quarantined, and this worker answers its
requests in-process (429) before authentication or before OPA is asked.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from extauthz.clock import Clock, system_clock
from extauthz.limits.config import LimiterConfig
from extauthz.limits.guard import SourceGuard, load_lua
from extauthz.limits.keys import (
    SUB_BUCKETS,
    hash_tag,
)
from extauthz.limits.known import KnownState
from extauthz.limits.memory import MemoryWindows, OverLimitCache
from extauthz.limits.plan import (
    Call,
    Plan,
    build_plan,
    by_slot,
    ceil_s,
    quarantined,
    script_args,
    whole,
)
from extauthz.limits.throttle import ThreatWatcher
from extauthz.metrics import (
    DEGRADED,
    LIMITER_FALLBACK,
    LIMITER_LOCAL,
    LIMITER_SECONDS,
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
        self.local = OverLimitCache(self._config.local_cache_size, self._config.local_cache_max_age)
        self.fallback = MemoryWindows(self._config.fallback_size)
        self.known = KnownState(self._config.fallback_size)
        self.guard = SourceGuard(redis, timeout, clock, self._config, self.local, self.known)
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

    # ---- the source guard (limits/guard.py): failures counted against sources
    def source_of(self, view: RequestView) -> str:
        return self.guard.source_of(view)

    def precheck(self, view: RequestView) -> None:
        self.guard.precheck(view)

    async def auth_failed(self, view: RequestView) -> None:
        await self.guard.auth_failed(view)

    def admit(self, principal: Principal) -> None:
        self.guard.admit(principal)

    async def policy_denied(self, view: RequestView, principal: Principal) -> None:
        await self.guard.policy_denied(view, principal)

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
        source = self.source_of(view) if view is not None else ""
        model = view.route.name if view is not None else ""
        level = self.threat.level
        plan = build_plan(self._config, level, principal, quota, source, model, policy)
        local = self._local_verdict(plan, now)
        if local is not None:
            return local
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster:
                    result = await self._run_cluster(plan, now_ms)
                else:
                    call = whole(plan)
                    reply = await self._call(plan, call, now_ms)
                    result = self._interpret(plan, [call], [reply], now)
        except (RedisError, OSError, TimeoutError) as exc:
            if policy is not None and policy.fail_mode == "open":
                return self._fallback(plan, now_ms)
            raise Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, type(exc).__name__) from exc
        finally:
            LIMITER_SECONDS.observe(time.perf_counter() - started)
        return result

    def _local_verdict(self, plan: Plan, now: float) -> LimitResult | None:
        """Deny in-process what this worker knows is quarantined or over limit."""
        local = self.local
        if not local:
            return None
        for key, kind in plan.blocks:
            until = local.until(key, now)
            if until is not None:
                LIMITER_LOCAL.labels("quarantine").inc()
                return quarantined(until - now, f"{kind} (local)").limits
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
        retry = ceil_s((until - now) * 1000)
        return LimitResult(
            allowed=False,
            reason=Reason.RATE_LIMITED,
            windows=(WindowState(w.window, 0, retry),),
            retry_after=retry,
            detail=f"window {w.window.name} (local)",
        )

    async def _call(self, plan: Plan, call: Call, now_ms: int) -> list[int]:
        keys, args = script_args(self._config, plan, call, now_ms)
        return await self._script(keys=keys, args=args)

    async def _run_cluster(self, plan: Plan, now_ms: int) -> LimitResult:
        calls = by_slot(plan)
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

    async def _give_back(self, plan: Plan, call: Call, now_ms: int) -> None:
        keys = [plan.windows[i].key for i in call.windows]
        fields = [
            now_ms // (plan.windows[i].window.window * 1000 // SUB_BUCKETS) for i in call.windows
        ]
        await self._refund(keys=keys, args=fields)

    def _interpret(
        self, plan: Plan, calls: list[Call], replies: list[list[Any]], now: float
    ) -> LimitResult:
        """The replies (one per call) → LimitResult, or Denied(401) when a credential is no
        longer active or a single-use value was seen before. Feeds the local cache."""
        states: dict[int, WindowState] = {}
        denied_by: list[tuple[int, str]] = []
        verdict, retry_ms, degrade = 1, 0, 0
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
            if call.risk and len(raw) > 3 + 4 * len(call.windows):
                degrade = max(degrade, int(raw[3 + 4 * len(call.windows)]))
            for j, i in enumerate(call.windows):
                remaining, reset, limit, denied = (int(x) for x in raw[3 + 4 * j : 7 + 4 * j])
                if refunded and v == 1:
                    remaining = min(limit, remaining + 1)
                w = plan.windows[i]
                window = w.window if limit == w.window.limit else replace(w.window, limit=limit)
                states[i] = WindowState(window, remaining, ceil_s(reset))
                if denied:
                    denied_by.append((reset, w.window.name))
                    self.local.put((w.key, w.window.limit), now + reset / 1000, now)
        if state_denial is not None:
            raise state_denial
        ordered = tuple(states[i] for i in sorted(states))
        if block is not None:
            ms, kind = block
            return quarantined(ms / 1000, kind, ordered).limits  # type: ignore[return-value]
        if verdict == 1:
            return LimitResult(allowed=True, reason=Reason.OK, windows=ordered, degrade=degrade)
        detail = "window " + max(denied_by)[1] if denied_by else "window"
        return LimitResult(
            allowed=False,
            reason=Reason.RATE_LIMITED,
            windows=ordered,
            retry_after=ceil_s(retry_ms),
            detail=detail,
        )

    def _learn(self, plan: Plan, call: Call, v: int, raw: list[Any], now: float) -> None:
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

    def _fallback(self, plan: Plan, now_ms: int) -> LimitResult:
        """Redis is down and the model is fail-open: enforce what this worker knows of states,
        quarantines and jtis (else refuse), then count in its memory."""
        now = now_ms / 1000
        known, c = self.known, self._config
        for key, kind in plan.blocks:
            until = known.quarantined_until(key, now)
            if until is not None:
                DEGRADED.labels("redis", "quarantined").inc()
                raise quarantined(until - now, f"{kind} (fallback)")
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
                w.window, max(0, limit - v.used - (1 if admitted else 0)), ceil_s(v.reset_ms)
            )
            for w, (limit, v) in zip(plan.windows, verdicts, strict=True)
        )
        if admitted:
            return LimitResult(True, Reason.OK, states, detail="fallback")
        retry = ceil_s(max(v.wait_ms for _, v in verdicts))
        return LimitResult(False, Reason.RATE_LIMITED, states, retry, detail="fallback")
