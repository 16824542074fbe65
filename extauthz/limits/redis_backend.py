"""The Redis backend: a decision's plan as one check_and_consume.lua call (single Redis) or one
call per slot sent at once with refunds on a deny (Cluster; limiter.py, "Cluster"), the replies
read through their codec into a LimitResult. What the replies say also feeds the worker's
over-limit cache and what it knows for the fallback."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from extauthz.clock import Clock
from extauthz.limits.backend import StorageError
from extauthz.limits.codec import (
    ADMITTED,
    BLOCKED,
    FULL,
    INACTIVE,
    REPLAYED,
    CheckReply,
    RefundArgs,
    load_script,
)
from extauthz.limits.config import LimiterConfig
from extauthz.limits.known import KnownState
from extauthz.limits.memory import OverLimitCache
from extauthz.limits.plan import Call, Plan, by_slot, ceil_s, check_args, quarantined, whole
from extauthz.metrics import QUARANTINES
from extauthz.store.schema import SUB_BUCKETS
from extauthz.types import Denied, LimitResult, Reason, Status, WindowState


class RedisBackend:
    def __init__(
        self,
        redis: Any,
        clock: Clock,
        config: LimiterConfig,
        local: OverLimitCache,
        known: KnownState,
    ) -> None:
        self._clock = clock
        self._config = config
        self._cluster = isinstance(redis, RedisCluster)
        self._script = redis.register_script(load_script("check_and_consume.lua"))
        self._refund = redis.register_script(load_script("refund.lua"))
        self.local = local
        self.known = known

    async def consume(self, plan: Plan, now: float) -> LimitResult:
        now_ms = int(now * 1000)
        try:
            if self._cluster:
                return await self._run_cluster(plan, now_ms)
            call = whole(plan)
            reply = await self._call(plan, call, now_ms)
        except (RedisError, OSError) as exc:
            raise StorageError(exc) from exc
        return self._interpret(plan, [call], [reply], now)

    async def _call(self, plan: Plan, call: Call, now_ms: int) -> CheckReply:
        keys, args = check_args(self._config, plan, call, now_ms).encode()
        return CheckReply.decode(await self._script(keys=keys, args=args))

    async def _run_cluster(self, plan: Plan, now_ms: int) -> LimitResult:
        calls = by_slot(plan)
        replies = await asyncio.gather(*(self._call(plan, call, now_ms) for call in calls))
        if any(r.verdict != ADMITTED for r in replies):
            refunds = [
                (call, reply)
                for call, reply in zip(calls, replies, strict=True)
                if reply.verdict == ADMITTED
            ]
            await asyncio.gather(
                *(self._give_back(plan, call, now_ms) for call, _ in refunds if call.windows)
            )
        return self._interpret(plan, calls, replies, self._clock())

    async def _give_back(self, plan: Plan, call: Call, now_ms: int) -> None:
        refund = RefundArgs(
            tuple(plan.windows[i].key for i in call.windows),
            tuple(
                now_ms // (plan.windows[i].window.window * 1000 // SUB_BUCKETS)
                for i in call.windows
            ),
        )
        keys, args = refund.encode()
        await self._refund(keys=keys, args=args)

    def _interpret(
        self, plan: Plan, calls: list[Call], replies: list[CheckReply], now: float
    ) -> LimitResult:
        """The replies (one per call) → LimitResult, or Denied(401) when a credential is no
        longer active or a single-use value was seen before. Feeds the local cache."""
        states: dict[int, WindowState] = {}
        denied_by: list[tuple[int, str]] = []
        verdict, retry_ms = 1, 0
        # a slot that counted while another denied is refunded: report it as not counted
        refunded = any(r.verdict != ADMITTED for r in replies)
        state_denial: Denied | None = None
        block: tuple[int, str] | None = None
        for call, r in zip(calls, replies, strict=True):
            v = r.verdict
            self._learn(plan, call, r, now)
            if v == INACTIVE:
                reason = plan.state[call.state[r.index - 1]][1]
                state_denial = Denied(Status.UNAUTHENTICATED, reason, "state check")
                continue
            if v == REPLAYED:
                state_denial = state_denial or Denied(
                    Status.UNAUTHENTICATED, Reason.DPOP_REPLAY, "state check"
                )
                continue
            if v == BLOCKED:
                key, kind = plan.blocks[call.blocks[r.index - 1]]
                ms = r.ms
                self.local.put(key, now + ms / 1000, now)
                if block is None or ms > block[0]:
                    block = (ms, kind)
                continue
            if v == FULL:
                verdict = 0
                retry_ms = max(retry_ms, r.ms)
                if r.quarantined:
                    QUARANTINES.labels("subject").inc()
                    self.local.put(plan.blocks[0][0], now + r.ms / 1000, now)
                    self.known.quarantine(plan.blocks[0][0], now + r.ms / 1000)
            for i, wr in zip(call.windows, r.windows, strict=True):
                remaining, reset, limit, denied = wr.remaining, wr.reset_ms, wr.limit, wr.denied
                if refunded and v == ADMITTED:
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
            return LimitResult(allowed=True, reason=Reason.OK, windows=ordered)
        detail = "window " + max(denied_by)[1] if denied_by else "window"
        return LimitResult(
            allowed=False,
            reason=Reason.RATE_LIMITED,
            windows=ordered,
            retry_after=ceil_s(retry_ms),
            detail=detail,
        )

    def _learn(self, plan: Plan, call: Call, r: CheckReply, now: float) -> None:
        """Remember what Redis said of states, quarantines and jtis, for the fallback."""
        known, v = self.known, r.verdict
        checked = call.state if v != INACTIVE else call.state[: r.index - 1]
        for i in checked:
            known.confirm(plan.state[i][0], now)
        if v == INACTIVE:
            known.revoke(plan.state[call.state[r.index - 1]][0], now)
        elif v == BLOCKED:
            known.quarantine(plan.blocks[call.blocks[r.index - 1]][0], now + r.ms / 1000)
        elif v in (
            REPLAYED,
            FULL,
            ADMITTED,
        ):  # the single-use keys were set (or already were: a replay)
            for key in call.singles:
                known.spend(key, now + plan.single_ttl_ms / 1000)
