"""The denial-rate signal raises the threat level in the real Redis, for every worker."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from extauthz.limits.throttle import AutoThreat, DenialRate, ThreatWatcher, ThrottleStore
from tests.integration.conftest import Clock

pytestmark = pytest.mark.integration


def watcher(redis: aioredis.Redis, clock: Clock, ratio: float = 0.5) -> ThreatWatcher:
    store = ThrottleStore(redis, clock=clock)
    auto = AutoThreat(DenialRate(10, 100, clock), store, ratio, "elevated", 600)
    return ThreatWatcher(redis, clock=clock, auto=auto)


async def test_a_flood_of_denials_raises_the_level_until_its_ttl(redis: aioredis.Redis) -> None:
    import time

    clock = Clock(time.time())
    store = ThrottleStore(redis, clock=clock)
    await store.clear_threat()
    w = watcher(redis, clock)
    for status in [200] * 40 + [403] * 60:
        w.record(status)
    await w.poll_once()
    assert w.level == "normal"  # the window has not passed yet
    clock.now += 10
    await w.poll_once()
    threat = await store.threat()
    assert (threat.level, threat.by) == ("elevated", "auto")
    assert "60% of 100 decisions denied" in threat.reason
    assert 0 < await redis.ttl("ea:threat") <= 600
    other_worker = ThreatWatcher(redis, clock=clock)
    await other_worker.poll_once()
    assert other_worker.level == "elevated"
    await store.clear_threat()


async def test_few_decisions_or_a_low_share_raise_nothing(redis: aioredis.Redis) -> None:
    import time

    clock = Clock(time.time())
    store = ThrottleStore(redis, clock=clock)
    await store.clear_threat()
    w = watcher(redis, clock)
    for status in [401] * 99:  # all denied, but fewer than the minimum
        w.record(status)
    clock.now += 10
    await w.poll_once()
    for status in [200] * 60 + [429] * 40:  # enough decisions, 40 % denied
        w.record(status)
    clock.now += 10
    await w.poll_once()
    assert (await store.threat()).level == "normal"


async def test_never_lowers_an_operator_level(redis: aioredis.Redis) -> None:
    import time

    clock = Clock(time.time())
    store = ThrottleStore(redis, clock=clock)
    await store.set_threat("critical", 300, "operator", by="cli")
    w = watcher(redis, clock)
    for status in [403] * 200:
        w.record(status)
    clock.now += 10
    await w.poll_once()
    threat = await store.threat()
    assert (threat.level, threat.by) == ("critical", "cli")
    await store.clear_threat()
