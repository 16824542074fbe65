"""The device registry and the DPoP state checks against the real Redis of the test stack:
enrollment, trust, expiry, revocation (immediate, in the Lua call) and jti replay (same call)."""

from __future__ import annotations

import secrets
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from joserfc.jwk import ECKey

from extauthz.authn.devices import DeviceRegistry, DeviceStore, device_record_name
from extauthz.authn.dpop import Proof, replay_key
from extauthz.limits.limiter import Limiter, LimiterConfig
from extauthz.store.schema import subject_tag
from extauthz.threat import ThreatWatcher
from extauthz.types import Denied, Device, Principal, Reason, Status, Window
from tests.integration.conftest import Clock
from tests.integration.test_limiter import anywhere

pytestmark = pytest.mark.integration

MINUTE5 = (Window("minute", 5, 60),)


def subject() -> str:
    return f"bob-{secrets.token_hex(4)}"


def principal(sub: str, device, jti: str = "") -> Principal:  # type: ignore[no-untyped-def]
    if jti:
        proof = Proof(jkt=device.thumbprint, jti=jti, iat=0)
        device = replace(device, replay_key=replay_key(sub, proof), replay_ttl=65)
    return Principal(
        sub,
        ("clinician",),
        ("clinical",),
        "standard",
        "jwt+dpop",
        "t0ken0hash00",
        rate_key=subject_tag(sub),
        device=device,
    )


async def test_enroll_lookup_and_list(redis: aioredis.Redis, clock: Clock) -> None:
    store = DeviceStore(redis, clock=clock)
    registry = DeviceRegistry(store, cache_ttl=30, clock=clock)
    sub, key = subject(), ECKey.generate_key("P-256")
    record = await store.enroll(sub, key.as_dict(private=True), "managed")
    assert record.thumbprint == key.thumbprint() and '"d"' not in record.jwk  # public part only
    device = await registry.lookup(sub, key.thumbprint())
    assert device.trust == "managed"
    assert device.state_key == device_record_name(sub, key.thumbprint())
    assert device.state_key.startswith(f"ea:{{{subject_tag(sub)}}}")  # the subject's slot
    assert any(r.thumbprint == key.thumbprint() for r in await store.list())


async def test_not_enrolled_or_enrolled_for_someone_else_is_trust_none(
    redis: aioredis.Redis, clock: Clock
) -> None:
    store = DeviceStore(redis, clock=clock)
    registry = DeviceRegistry(store, clock=clock)
    key = ECKey.generate_key("P-256")
    await store.enroll("someone-else", key.as_dict(), "attested")
    device = await registry.lookup(subject(), key.thumbprint())
    assert device.trust == "none" and device.state_key == ""


async def test_an_expired_enrollment_is_trust_none(redis: aioredis.Redis, clock: Clock) -> None:
    store = DeviceStore(redis, clock=clock)
    registry = DeviceRegistry(store, clock=clock)
    sub, key = subject(), ECKey.generate_key("P-256")
    await store.enroll(sub, key.as_dict(), "managed", expires_in=60)
    assert (await registry.lookup(sub, key.thumbprint())).trust == "managed"
    clock.now += 61
    assert (await registry.lookup(sub, key.thumbprint())).trust == "none"


async def test_enrollment_refuses_bad_input(redis: aioredis.Redis, clock: Clock) -> None:
    store = DeviceStore(redis, clock=clock)
    key = ECKey.generate_key("P-256")
    with pytest.raises(ValueError):
        await store.enroll("bob", key.as_dict(), "root")
    with pytest.raises(ValueError):
        await store.enroll("bob", {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}, "managed")
    with pytest.raises(ValueError):
        await store.enroll("", key.as_dict(), "managed")


async def test_revocation_is_immediate_even_while_cached(
    redis: aioredis.Redis, clock: Clock
) -> None:
    store = DeviceStore(redis, clock=clock)
    registry = DeviceRegistry(store, cache_ttl=300, clock=clock)
    limiter = Limiter(
        redis,
        timeout=2,
        clock=clock,
        config=LimiterConfig(),
        threat=ThreatWatcher(redis, clock=clock),
    )
    sub, key = subject(), ECKey.generate_key("P-256")
    await store.enroll(sub, key.as_dict(), "managed")
    device = await registry.lookup(sub, key.thumbprint())
    assert (await limiter.check(principal(sub, device, "j1"), MINUTE5, *anywhere(MINUTE5))).allowed
    assert await store.revoke(key.thumbprint()) == 1
    cached = await registry.lookup(sub, key.thumbprint())  # still cached as active
    with pytest.raises(Denied) as info:
        await limiter.check(principal(sub, cached, "j2"), MINUTE5, *anywhere(MINUTE5))
    assert info.value.status is Status.UNAUTHENTICATED
    assert info.value.reason is Reason.DEVICE_REVOKED
    # once the cache expires, the lookup itself refuses
    fresh = DeviceRegistry(store, clock=clock)
    with pytest.raises(Denied) as info:
        await fresh.lookup(sub, key.thumbprint())
    assert info.value.reason is Reason.DEVICE_REVOKED


async def test_a_replayed_jti_is_refused_in_the_same_call(
    redis: aioredis.Redis, clock: Clock
) -> None:
    store = DeviceStore(redis, clock=clock)
    limiter = Limiter(
        redis,
        timeout=2,
        clock=clock,
        config=LimiterConfig(),
        threat=ThreatWatcher(redis, clock=clock),
    )
    sub, key = subject(), ECKey.generate_key("P-256")
    await store.enroll(sub, key.as_dict(), "managed")
    device = await DeviceRegistry(store, clock=clock).lookup(sub, key.thumbprint())
    first = await limiter.check(principal(sub, device, "jti-1"), MINUTE5, *anywhere(MINUTE5))
    assert first.allowed and first.windows[0].remaining == 4
    with pytest.raises(Denied) as info:
        await limiter.check(principal(sub, device, "jti-1"), MINUTE5, *anywhere(MINUTE5))
    assert info.value.reason is Reason.DPOP_REPLAY
    # the replay consumed no quota; a fresh proof is admitted
    again = await limiter.check(principal(sub, device, "jti-2"), MINUTE5, *anywhere(MINUTE5))
    assert again.allowed and again.windows[0].remaining == 3
    # the jti is remembered for the acceptance window (TTL set in the same call)
    name = replay_key(sub, Proof(key.thumbprint(), "jti-1", 0))
    assert 60_000 < await redis.pttl(name) <= 65_000


async def test_a_rate_limited_proof_is_spent_all_the_same(
    redis: aioredis.Redis, clock: Clock
) -> None:
    limiter = Limiter(
        redis,
        timeout=2,
        clock=clock,
        config=LimiterConfig(),
        threat=ThreatWatcher(redis, clock=clock),
    )
    sub = subject()
    device = Device(thumbprint="jkt", trust="none")  # not enrolled: no state key
    one = (Window("minute", 1, 60),)
    assert (await limiter.check(principal(sub, device, "a"), one, *anywhere(one))).allowed
    limited = await limiter.check(principal(sub, device, "b"), one, *anywhere(one))
    assert not limited.allowed and limited.reason is Reason.RATE_LIMITED
    with pytest.raises(Denied) as info:
        await limiter.check(principal(sub, device, "b"), one, *anywhere(one))
    assert info.value.reason is Reason.DPOP_REPLAY


async def test_one_redis_call_per_dpop_decision(redis: aioredis.Redis, clock: Clock) -> None:
    store = DeviceStore(redis, clock=clock)
    limiter = Limiter(
        redis,
        timeout=2,
        clock=clock,
        config=LimiterConfig(),
        threat=ThreatWatcher(redis, clock=clock),
    )
    sub, key = subject(), ECKey.generate_key("P-256")
    await store.enroll(sub, key.as_dict(), "managed")
    device = await DeviceRegistry(store, clock=clock).lookup(sub, key.thumbprint())
    await limiter.check(
        principal(sub, device, "warm"), MINUTE5, *anywhere(MINUTE5)
    )  # script loaded
    before = await redis.info("commandstats")
    for i in range(3):
        await limiter.check(principal(sub, device, f"j{i}"), MINUTE5, *anywhere(MINUTE5))
    after = await redis.info("commandstats")
    calls = {k: after[k]["calls"] - before.get(k, {"calls": 0})["calls"] for k in after}
    assert calls.get("cmdstat_evalsha") == 3
    inside = {"cmdstat_hget", "cmdstat_pttl", "cmdstat_set", "cmdstat_hgetall"}
    inside |= {"cmdstat_hincrby", "cmdstat_hdel", "cmdstat_pexpire"}
    assert {k for k, v in calls.items() if v} - inside - {"cmdstat_info"} == {"cmdstat_evalsha"}
