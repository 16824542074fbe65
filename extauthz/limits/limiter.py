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
        state = state_checks(principal)
        device = principal.device
        single_use = [device.replay_key] if device.replay_key else []
        keys: list[str] = [key for key, _ in state] + single_use
        args: list[int] = [now_ms, len(state), len(single_use), device.replay_ttl * 1000]
        for window in quota:
            keys.extend(counter_keys(tag, window, now_ms))
            args.extend((window.limit, window.window * 1000))
        try:
            async with asyncio.timeout(self._timeout):
                raw = await self._script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise Denied(Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, type(exc).__name__) from exc
        return interpret(raw, quota, tuple(reason for _, reason in state))


def state_checks(principal: Principal) -> list[tuple[str, Reason]]:
    """The records that must still be active, each with the reason when one is not."""
    checks = [(principal.state_key, Reason.KEY_REVOKED)] if principal.state_key else []
    if principal.device.state_key:
        checks.append((principal.device.state_key, Reason.DEVICE_REVOKED))
    return checks


def _ceil_s(ms: int) -> int:
    return max(1, -(-int(ms) // 1000))


def interpret(
    raw: list[int],
    quota: tuple[Window, ...],
    state_reasons: tuple[Reason, ...] = (Reason.KEY_REVOKED,),
) -> LimitResult:
    """The script's reply → LimitResult, or Denied(401) when a credential is no longer active
    or a single-use value (a DPoP proof's jti) was seen before."""
    verdict, retry_ms = int(raw[0]), int(raw[1])
    if verdict == -1:
        # the second value is the 1-based index of the first inactive record
        ok = 0 < retry_ms <= len(state_reasons)
        reason = state_reasons[retry_ms - 1] if ok else Reason.KEY_REVOKED
        raise Denied(Status.UNAUTHENTICATED, reason, "state check")
    if verdict == -2:
        raise Denied(Status.UNAUTHENTICATED, Reason.DPOP_REPLAY, "state check")
    states = tuple(
        WindowState(window=w, remaining=int(raw[2 + 2 * i]), reset=_ceil_s(raw[3 + 2 * i]))
        for i, w in enumerate(quota)
    )
    if verdict == 1:
        return LimitResult(allowed=True, reason=Reason.OK, windows=states)
    return LimitResult(
        allowed=False, reason=Reason.RATE_LIMITED, windows=states, retry_after=_ceil_s(retry_ms)
    )
