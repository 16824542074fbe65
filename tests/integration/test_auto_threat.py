"""The automatic threat level: raised in the real Redis, for every worker, only by trusted
signals — authenticated sources refused, each counted once per window."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time

import pytest
import redis.asyncio as aioredis

from extauthz.authn.apikeys import KeyStore
from extauthz.dev.devstack import Stack
from extauthz.limits.throttle import ThrottleStore
from extauthz.threat import AutoThreat, RefusedSources, ThreatWatcher
from extauthz.wiring import build_service, key_pepper
from tests.e2e.payloads import DIGITS
from tests.integration.conftest import Clock
from tests.unit.checkrequests import check_request

pytestmark = pytest.mark.integration


def watcher(redis: aioredis.Redis, clock: Clock, ratio: float = 0.5) -> ThreatWatcher:
    store = ThrottleStore(redis, clock=clock)
    auto = AutoThreat(RefusedSources(10, 20, clock), store, ratio, "elevated", 600)
    return ThreatWatcher(redis, clock=clock, auto=auto)


async def test_many_refused_authenticated_sources_raise_the_level_until_its_ttl(
    redis: aioredis.Redis,
) -> None:
    clock = Clock(time.time())
    store = ThrottleStore(redis, clock=clock)
    await store.clear_threat()
    w = watcher(redis, clock)
    for i in range(40):  # 40 tenants on 40 networks, 25 of them refused
        w.record(f"key:{i}", f"10.0.{i}.0/24", refused=i < 25)
    await w.poll_once()
    assert w.level == "normal"  # the window has not passed yet
    clock.now += 10
    await w.poll_once()
    threat = await store.threat()
    assert (threat.level, threat.by) == ("elevated", "auto")
    assert "25 authenticated sources refused (62% of those seen)" in threat.reason
    assert 0 < await redis.ttl("ea:threat") <= 600
    other_worker = ThreatWatcher(redis, clock=clock)
    await other_worker.poll_once()
    assert other_worker.level == "elevated"
    await store.clear_threat()


async def test_each_source_counts_once(redis: aioredis.Redis) -> None:
    clock = Clock(time.time())
    store = ThrottleStore(redis, clock=clock)
    await store.clear_threat()
    w = watcher(redis, clock)
    for _ in range(1000):  # one key refused a thousand times
        w.record("key:one", "10.9.9.0/24", refused=True)
    for i in range(100):  # a hundred keys, all from one network
        w.record(f"key:{i}", "10.9.8.0/24", refused=True)
    for i in range(100):  # one stolen key from a hundred networks
        w.record("key:stolen", f"10.{i}.0.0/24", refused=True)
    clock.now += 10
    await w.poll_once()
    assert (await store.threat()).level == "normal"


async def test_a_low_share_raises_nothing(redis: aioredis.Redis) -> None:
    clock = Clock(time.time())
    store = ThrottleStore(redis, clock=clock)
    await store.clear_threat()
    w = watcher(redis, clock)
    for i in range(100):  # 30 of 100 sources refused
        w.record(f"key:{i}", f"10.1.{i}.0/24", refused=i < 30)
    clock.now += 10
    await w.poll_once()
    assert (await store.threat()).level == "normal"


async def test_never_lowers_an_operator_level(redis: aioredis.Redis) -> None:
    clock = Clock(time.time())
    store = ThrottleStore(redis, clock=clock)
    await store.set_threat("critical", 300, "operator", by="cli")
    w = watcher(redis, clock)
    for i in range(200):
        w.record(f"key:{i}", f"10.2.{i}.0/24", refused=True)
    clock.now += 10
    await w.poll_once()
    threat = await store.threat()
    assert (threat.level, threat.by) == ("critical", "cli")
    await store.clear_threat()


async def test_unauthenticated_and_quarantined_traffic_does_not_move_it(
    stack: Stack, redis: aioredis.Redis
) -> None:
    """Finding 4, through the real handler: a few hundred requests with bad credentials (401,
    then 429 once their network is quarantined) beside a little normal traffic raised the
    level to `elevated` for every tenant on main. They are not trusted signals."""
    settings = stack.settings.model_copy(
        update={
            "decision_log": os.devnull,
            "auto_threat_ratio": 0.5,
            "auto_threat_window": 1.0,
            "auto_threat_min_sources": 1,  # the lowest bar: any trusted refusal would count
            "auth_failure_limit": 50,
        }
    )
    store = ThrottleStore(redis)
    await store.clear_threat()
    _, key = await KeyStore(redis, key_pepper(settings)).create(
        f"tenant-{secrets.token_hex(4)}", ("analyst",), ("vision",), "standard"
    )
    attacker = "198.51.100.9"
    service = build_service(settings)
    await service.start()
    try:
        for _ in range(10):  # a tenant's normal traffic
            headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
            req = check_request(headers=headers, body=json.dumps(DIGITS).encode())
            assert (await service.handler.check(req)).status.code == 0  # allowed
        codes = set()
        for i in range(300):
            bad = {"authorization": f"Bearer eak_{secrets.token_hex(6)}.{'x' * 43}"}
            req = check_request(headers=bad, source_ip=attacker, request_id=f"bad{i}")
            codes.add((await service.handler.check(req)).denied_response.status.code)
        assert codes == {401, 429}  # stuffing, then the quarantined network
        await asyncio.sleep(1.1)
        await service.threat.poll_once()
        assert (await store.threat()).level == "normal"
        assert service.threat.level == "normal"
    finally:
        await service.close()
        await store.clear_threat()
        await store.release("prefix", attacker)
