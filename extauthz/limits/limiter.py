"""Stage 4: the decision's state check — one Lua call per Redis slot, one round trip.

This module is the strategy (plan, local verdict, which backend); storage is behind
backend.QuotaBackend: Redis (redis_backend.py) and, while Redis is down, memory (fallback.py).

Algorithm. Each window is a sub-bucketed sliding window (`store.schema.SUB_BUCKETS` buckets per
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
from typing import Any

from extauthz.clock import Clock, system_clock
from extauthz.limits.backend import QuotaBackend, StorageError
from extauthz.limits.config import LimiterConfig
from extauthz.limits.fallback import MemoryBackend
from extauthz.limits.guard import SourceGuard
from extauthz.limits.known import KnownState
from extauthz.limits.memory import OverLimitCache
from extauthz.limits.plan import Plan, build_plan, ceil_s, quarantined
from extauthz.limits.redis_backend import RedisBackend
from extauthz.metrics import LIMITER_LOCAL, LIMITER_SECONDS
from extauthz.store.schema import hash_tag
from extauthz.threat import ThreatWatcher
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
        *,
        config: LimiterConfig,
        threat: ThreatWatcher,  # polled by the service (wiring.Service.start), read here
    ) -> None:
        self._redis = redis
        self._timeout = timeout
        self._clock = clock
        self._config = c = config
        self.local = OverLimitCache(c.local_cache_size, c.local_cache_max_age)
        self.known = KnownState(c.fallback_size)
        self.redis: QuotaBackend = RedisBackend(redis, clock, c, self.local, self.known)
        self.fallback: QuotaBackend = MemoryBackend(c, self.known)
        self.guard = SourceGuard(redis, timeout, clock, c, self.local, self.known)
        self.threat = threat

    def observe(self, decision: Decision, view: RequestView) -> None:
        """One decision's outcome, for the automatic threat level: only authenticated,
        not quarantined decisions count (threat.RefusedSources)."""
        principal = decision.principal
        if principal is None or decision.reason is Reason.QUARANTINED:
            return
        status = int(decision.status)
        if status not in (200, 403, 429):
            return
        self.threat.record(hash_tag(principal), self.source_of(view), status != 200)

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
        view: RequestView,
        policy: PolicyDecision,
    ) -> LimitResult:
        now = self._clock()
        source = self.source_of(view)
        level = self.threat.level
        plan = build_plan(self._config, level, principal, quota, source, view.route.name, policy)
        local = self._local_verdict(plan, now)
        if local is not None:
            return local
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeout):
                result = await self.redis.consume(plan, now)
        except (StorageError, TimeoutError) as exc:
            if policy.fail_mode == "open":
                return await self.fallback.consume(plan, now)
            kind = exc.kind if isinstance(exc, StorageError) else type(exc).__name__
            raise Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, kind) from exc
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
