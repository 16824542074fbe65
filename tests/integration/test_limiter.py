"""The Lua state check against the real Redis of the test stack."""

from __future__ import annotations

import secrets

import pytest
import redis.asyncio as aioredis

from extauthz.authn.apikeys import key_record_name
from extauthz.limits.limiter import Limiter
from extauthz.types import Denied, Principal, Reason, Status, Window
from tests.integration.conftest import Clock

pytestmark = pytest.mark.integration

MINUTE5 = (Window("minute", 5, 60),)


async def principal(redis: aioredis.Redis, status: str = "active") -> Principal:
    key_id = secrets.token_hex(6)
    await redis.hset(key_record_name(key_id), mapping={"status": status})
    return Principal(
        "alice", ("analyst",), ("vision",), "trial", "api_key", key_id, key_record_name(key_id)
    )


async def test_admits_up_to_the_limit_then_denies(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = Limiter(redis, timeout=2, clock=clock)
    p = await principal(redis)
    remaining = []
    for _ in range(5):
        result = await limiter.check(p, MINUTE5)
        assert result.allowed
        remaining.append(result.windows[0].remaining)
        clock.now += 1
    assert remaining == [4, 3, 2, 1, 0]
    denied = await limiter.check(p, MINUTE5)
    assert not denied.allowed and denied.reason is Reason.RATE_LIMITED
    assert denied.retry_after > 0


async def test_a_denied_request_consumes_nothing(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = Limiter(redis, timeout=2, clock=clock)
    p = await principal(redis)
    windows = (Window("burst", 2, 1), Window("minute", 3, 60))
    assert (await limiter.check(p, windows)).allowed
    assert (await limiter.check(p, windows)).allowed
    # the burst window denies: the minute window must not be charged
    for _ in range(10):
        assert not (await limiter.check(p, windows)).allowed
    clock.now += 2  # burst window has fully slid by
    third = await limiter.check(p, windows)
    assert third.allowed
    assert third.windows[1].remaining == 0  # 3 of 3 used: the denied ten were free
    clock.now += 2
    assert not (await limiter.check(p, windows)).allowed


async def test_retry_after_is_exactly_when_room_returns(
    redis: aioredis.Redis, clock: Clock
) -> None:
    """Never too early (a retry at retry_after is admitted), never needlessly late (one second
    before it is still denied)."""
    limiter = Limiter(redis, timeout=2, clock=clock)
    p = await principal(redis)
    clock.now += 20  # 20 s into a bucket
    for _ in range(5):
        assert (await limiter.check(p, MINUTE5)).allowed
    denied = await limiter.check(p, MINUTE5)
    assert not denied.allowed
    start = clock.now
    clock.now = start + denied.retry_after - 1
    assert not (await limiter.check(p, MINUTE5)).allowed
    clock.now = start + denied.retry_after
    assert (await limiter.check(p, MINUTE5)).allowed


async def test_sliding_window_weights_the_previous_bucket(
    redis: aioredis.Redis, clock: Clock
) -> None:
    limiter = Limiter(redis, timeout=2, clock=clock)
    p = await principal(redis)
    window = (Window("minute", 10, 60),)
    clock.now += 50
    for _ in range(10):
        assert (await limiter.check(p, window)).allowed
    # 15 s into the next bucket the previous one still weighs 45/60 * 10 = 7.5
    clock.now += 25
    admitted = 0
    while (await limiter.check(p, window)).allowed:
        admitted += 1
    assert admitted == 2  # 7.5 + 2 = 9.5, + 1 more would be 10.5 > 10


async def test_revoked_credential_is_refused_in_the_same_call(
    redis: aioredis.Redis, clock: Clock
) -> None:
    limiter = Limiter(redis, timeout=2, clock=clock)
    p = await principal(redis)
    assert (await limiter.check(p, MINUTE5)).allowed
    await redis.hset(p.state_key, "status", "revoked")
    with pytest.raises(Denied) as info:
        await limiter.check(p, MINUTE5)
    assert info.value.status is Status.UNAUTHENTICATED


async def test_missing_credential_record_is_refused(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = Limiter(redis, timeout=2, clock=clock)
    p = await principal(redis)
    await redis.delete(p.state_key)  # e.g. Redis lost its data
    with pytest.raises(Denied):
        await limiter.check(p, MINUTE5)


async def test_one_redis_call_per_decision(redis: aioredis.Redis, clock: Clock) -> None:
    limiter = Limiter(redis, timeout=2, clock=clock)
    p = await principal(redis)
    await limiter.check(p, MINUTE5)  # script loaded
    before = await redis.info("commandstats")
    for _ in range(3):
        await limiter.check(p, (Window("second", 100, 1), Window("minute", 100, 60)))
    after = await redis.info("commandstats")
    calls = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
    assert calls.get("cmdstat_evalsha") == 3
    # commandstats also counts the commands the script runs inside Redis; nothing else ran
    inside = {"cmdstat_get", "cmdstat_incr", "cmdstat_pexpire", "cmdstat_hget", "cmdstat_info"}
    assert {k for k, v in calls.items() if v} - inside == {"cmdstat_evalsha"}


async def test_redis_unreachable_fails_closed(clock: Clock) -> None:
    from extauthz.settings import Settings
    from extauthz.wiring import redis_client

    dead = redis_client(Settings(redis_url="redis://127.0.0.1:1/0", redis_timeout=0.2))
    limiter = Limiter(dead, timeout=0.2, clock=clock)
    with pytest.raises(Denied) as info:
        await limiter.check(Principal("a", (), (), "t", "api_key", "x", "ea:{key:x}:key"), MINUTE5)
    assert info.value.status is Status.UNAVAILABLE and info.value.reason is Reason.REDIS_UNAVAILABLE
    await dead.aclose()
