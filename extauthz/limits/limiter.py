"""Stage 4: the decision's state check in ONE Redis call (a Lua script called by SHA)."""

from __future__ import annotations

import asyncio
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from extauthz.clock import Clock, system_clock
from extauthz.limits.keys import counter_keys, hash_tag
from extauthz.types import Denied, LimitResult, Principal, Reason, Status, Window, WindowState


def load_lua(name: str) -> str:
    return resources.files("extauthz.limits").joinpath("lua", name).read_text()


class Limiter:
    """Checks every window of a decision's quota and the credential's state; consumes only on
    a full pass. Redis errors and timeouts raise Denied(503): the caller fails closed."""

    def __init__(self, redis: aioredis.Redis, timeout: float, clock: Clock = system_clock) -> None:
        self._redis = redis
        self._timeout = timeout
        self._clock = clock
        self._script = redis.register_script(load_lua("check_and_consume.lua"))

    async def check(self, principal: Principal, quota: tuple[Window, ...]) -> LimitResult:
        now_ms = int(self._clock() * 1000)
        tag = hash_tag(principal)
        keys: list[str] = [principal.state_key] if principal.state_key else []
        args: list[int] = [now_ms, len(keys)]
        for window in quota:
            keys.extend(counter_keys(tag, window, now_ms))
            args.extend((window.limit, window.window * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, type(exc).__name__) from exc
        return interpret(raw, quota)


def _ceil_s(ms: int) -> int:
    return max(1, -(-int(ms) // 1000))


def interpret(raw: list[int], quota: tuple[Window, ...]) -> LimitResult:
    """The script's reply → LimitResult (or Denied(401) when the credential is no longer active)."""
    verdict, retry_ms = int(raw[0]), int(raw[1])
    if verdict == -1:
        raise Denied(Status.UNAUTHENTICATED, Reason.KEY_REVOKED, "state check")
    states = tuple(
        WindowState(window=w, remaining=int(raw[2 + 2 * i]), reset=_ceil_s(raw[3 + 2 * i]))
        for i, w in enumerate(quota)
    )
    if verdict == 1:
        return LimitResult(allowed=True, reason=Reason.OK, windows=states)
    return LimitResult(
        allowed=False, reason=Reason.RATE_LIMITED, windows=states, retry_after=_ceil_s(retry_ms)
    )
