"""The in-memory backend: the fallback while Redis is down, for a model whose policy says
`fail_mode: open` (limiter.py). Per worker: with N workers at most N x limit per window, plus
what Redis had already counted. It enforces what the worker learned from Redis (known.py) and
refuses what it cannot know."""

from __future__ import annotations

from extauthz.limits.config import LimiterConfig
from extauthz.limits.known import KnownState
from extauthz.limits.memory import MemoryWindows
from extauthz.limits.plan import Plan, ceil_s, quarantined
from extauthz.metrics import DEGRADED, LIMITER_FALLBACK
from extauthz.store.schema import SUB_BUCKETS
from extauthz.types import Denied, LimitResult, Reason, Status, WindowState


class MemoryBackend:
    def __init__(self, config: LimiterConfig, known: KnownState) -> None:
        self._config = config
        self.known = known
        self.windows = MemoryWindows(config.fallback_size)

    async def consume(self, plan: Plan, now: float) -> LimitResult:
        """Redis is down and the model is fail-open: enforce what this worker knows of states,
        quarantines and jtis (else refuse), then count in its memory."""
        now_ms = int(now * 1000)
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
        admitted, verdicts = self.windows.check(windows, now_ms, SUB_BUCKETS)
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
