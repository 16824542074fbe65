"""The limiter against real Redis: the test stack's single Redis, and a real 3-master Redis
Cluster (every test runs on both)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from extauthz.authn.apikeys import key_record_name
from extauthz.authn.devices import device_record_name
from extauthz.dev.devstack import Stack
from extauthz.limits.limiter import Limiter, LimiterConfig
from extauthz.limits.throttle import ThrottleStore
from extauthz.settings import Settings
from extauthz.store.schema import device_tag, prefix_tag, source_prefix, subject_tag
from extauthz.threat import ThreatWatcher
from extauthz.types import (
    Denied,
    Device,
    ModelRoute,
    PolicyDecision,
    Principal,
    Reason,
    RequestView,
    Status,
    Window,
)
from extauthz.wiring import redis_client
from tests.integration.conftest import Clock

pytestmark = pytest.mark.integration

MINUTE5 = (Window("minute", 5, 60),)
THROTTLE = (("critical", 0.1), ("elevated", 0.5), ("high", 0.25))


@pytest.fixture(params=["single", "cluster"])
async def redis(request: pytest.FixtureRequest, stack: Stack) -> AsyncIterator[Any]:
    """The same tests against one Redis and against a Redis Cluster."""
    settings = stack.settings.model_copy(update={"redis_timeout": 2.0})
    if request.param == "cluster":
        url = request.getfixturevalue("cluster_url")
        settings = settings.model_copy(update={"redis_url": url, "redis_cluster": True})
    client = redis_client(settings)
    yield client
    await client.aclose()


def limiter(redis: Any, clock: Clock, **config: Any) -> Limiter:
    return Limiter(
        redis,
        timeout=2,
        clock=clock,
        config=LimiterConfig(**config),
        threat=ThreatWatcher(redis, clock=clock),
    )


async def principal(
    redis: Any, status: str = "active", subject: str = "", device: bool = False
) -> Principal:
    key_id = secrets.token_hex(6)
    subject = subject or f"alice-{key_id}"
    await redis.hset(key_record_name(key_id), mapping={"status": status})
    p = Principal(
        subject, ("analyst",), ("vision",), "trial", "api_key", key_id, key_record_name(key_id)
    )
    if device:
        jkt = secrets.token_urlsafe(32)
        await redis.hset(device_record_name(subject, jkt), mapping={"status": "active"})
        p = Principal(
            *(p.subject, p.roles, p.projects, p.tier, p.credential, p.credential_id, p.state_key),
            device=Device(jkt, "managed", device_record_name(subject, jkt), "", 0),
        )
    return p


def with_proof(p: Principal) -> Principal:
    """The same principal presenting a fresh DPoP proof (a new jti)."""
    from dataclasses import replace

    jti = f"ea:{{{p.device.state_key.split('{')[1].split('}')[0]}}}:jti:{secrets.token_hex(8)}"
    return replace(p, device=replace(p.device, replay_key=jti, replay_ttl=60))


def view(source_ip: str = "10.1.2.3", model: str = "digits") -> RequestView:
    path = f"/v2/models/{model}/infer"
    return RequestView("req", "POST", path, "h", source_ip, {}, ModelRoute(model, "", "infer"))


def policy(quota: tuple[Window, ...], fail_mode: str = "closed") -> PolicyDecision:
    return PolicyDecision(
        True, 200, "ok", quota, project="vision", fail_mode=fail_mode, throttle=THROTTLE
    )


def anywhere(quota: tuple[Window, ...]) -> tuple[RequestView, PolicyDecision]:
    """A request from a network no other test uses, under a policy that only sets `quota`."""
    return view(fresh_net()), PolicyDecision(True, 200, "ok", quota)


def fresh_net() -> str:
    """A source address in a /24 no other test uses."""
    return f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.7"


async def check(lim: Limiter, p: Principal, quota: tuple[Window, ...], ip: str = "") -> Any:
    return await lim.check(p, quota, view(ip or fresh_net()), policy(quota))


# ------------------------------------------------------------------ windows


async def test_admits_up_to_the_limit_then_denies(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock)
    p = await principal(redis)
    remaining = []
    for _ in range(5):
        result = await lim.check(p, MINUTE5, *anywhere(MINUTE5))
        assert result.allowed
        remaining.append(result.windows[0].remaining)
        clock.now += 1
    assert remaining == [4, 3, 2, 1, 0]
    denied = await lim.check(p, MINUTE5, *anywhere(MINUTE5))
    assert not denied.allowed and denied.reason is Reason.RATE_LIMITED
    assert denied.retry_after > 0


async def test_a_denied_request_consumes_nothing(redis: Any, clock: Clock) -> None:
    """Across slots too: the burst window is the subject's, the network window the prefix's."""
    lim = limiter(redis, clock, local_cache_size=0)
    p = await principal(redis)
    ip = fresh_net()
    windows = (Window("burst", 2, 1), Window("net", 3, 60, ("source_prefix",)))
    assert (await check(lim, p, windows, ip)).allowed
    assert (await check(lim, p, windows, ip)).allowed
    # the burst window denies: the network window must not be charged
    for _ in range(10):
        assert not (await check(lim, p, windows, ip)).allowed
    clock.now += 2  # burst window has fully slid by
    third = await check(lim, p, windows, ip)
    assert third.allowed
    assert third.windows[1].remaining == 0  # 3 of 3 used: the denied ten were free
    clock.now += 2
    assert not (await check(lim, p, windows, ip)).allowed


async def test_a_denial_in_one_slot_refunds_the_others(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    ip = fresh_net()
    net = (Window("own", 100, 60), Window("net", 1, 60, ("source_prefix",)))
    assert (await check(lim, await principal(redis), net, ip)).allowed
    p = await principal(redis)
    for _ in range(5):
        assert not (await check(lim, p, net, ip)).allowed  # network full; own window refunded
    clock.now += 70
    result = await check(lim, p, net, fresh_net())
    assert result.allowed and result.windows[0].remaining == 99


async def test_retry_after_is_exactly_when_room_returns(redis: Any, clock: Clock) -> None:
    """Never too early (a retry at retry_after is admitted), never needlessly late (one second
    before it is still denied)."""
    lim = limiter(redis, clock, local_cache_size=0)
    p = await principal(redis)
    clock.now += 20  # 20 s into a minute
    for _ in range(5):
        assert (await lim.check(p, MINUTE5, *anywhere(MINUTE5))).allowed
    denied = await lim.check(p, MINUTE5, *anywhere(MINUTE5))
    assert not denied.allowed
    start = clock.now
    clock.now = start + denied.retry_after - 1
    assert not (await lim.check(p, MINUTE5, *anywhere(MINUTE5))).allowed
    clock.now = start + denied.retry_after
    assert (await lim.check(p, MINUTE5, *anywhere(MINUTE5))).allowed


async def test_no_trailing_window_ever_holds_more_than_the_limit(redis: Any, clock: Clock) -> None:
    """Sub-buckets count in full while they overlap the window: a burst at the end of one
    minute and another at the start of the next never add up to more than the limit."""
    lim = limiter(redis, clock, local_cache_size=0)
    p = await principal(redis)
    window = (Window("minute", 10, 60),)
    admitted = []
    clock.now += 50
    for _ in range(400):  # 0.25 s apart for 100 s
        if (await lim.check(p, window, *anywhere(window))).allowed:
            admitted.append(clock.now)
        clock.now += 0.25
    assert len(admitted) >= 10
    for t in admitted:
        assert sum(1 for u in admitted if t - 60 < u <= t) <= 10


async def test_burst_and_sustained_windows(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    p = await principal(redis)
    quota = (Window("second", 3, 1), Window("minute", 5, 60))
    assert [(await lim.check(p, quota, *anywhere(quota))).allowed for _ in range(4)] == [
        True
    ] * 3 + [False]
    clock.now += 1.5  # the burst window has room again; the minute holds 3 of 5
    assert [(await lim.check(p, quota, *anywhere(quota))).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]
    result = await lim.check(p, quota, *anywhere(quota))
    assert result.windows[1].remaining == 0 and not result.allowed


# ------------------------------------------------------------------ dimensions


async def test_a_source_prefix_window_is_shared_by_every_key_from_that_network(
    redis: Any, clock: Clock
) -> None:
    """Rotating keys (or minting more) does not escape a per-/24 window; another /24 does."""
    lim = limiter(redis, clock, local_cache_size=0)
    base = fresh_net().rsplit(".", 1)[0]
    quota = (Window("minute", 5, 60), Window("net", 4, 60, ("source_prefix",)))
    keys = [await principal(redis, subject="mallory") for _ in range(4)]
    results = [await check(lim, k, quota, f"{base}.{i + 10}") for i, k in enumerate(keys)]
    assert all(r.allowed for r in results)
    rotated = await principal(redis, subject="mallory")
    denied = await check(lim, rotated, quota, f"{base}.99")
    assert not denied.allowed and denied.detail == "window net"
    assert (await check(lim, rotated, quota, fresh_net())).allowed


async def test_ipv6_clients_share_a_56(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    quota = (Window("net", 2, 60, ("source_prefix",)),)
    net = f"2001:db8:{secrets.randbelow(65000):x}"
    p = await principal(redis)
    assert (await check(lim, p, quota, f"{net}:10::1")).allowed
    assert (await check(lim, p, quota, f"{net}:ff:1:2:3:4")).allowed
    assert not (await check(lim, p, quota, f"{net}:42::9")).allowed  # same /56
    assert (await check(lim, p, quota, f"{net}:100::1")).allowed  # the next /56


async def test_subject_by_model_windows(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    quota = (Window("per_model", 2, 60, ("subject", "model")),)
    subject = f"sam-{secrets.token_hex(3)}"
    k1, k2 = await principal(redis, subject=subject), await principal(redis, subject=subject)

    async def infer(p: Principal, model: str) -> bool:
        return (await lim.check(p, quota, view(fresh_net(), model), policy(quota))).allowed

    assert [await infer(k1, "digits"), await infer(k2, "digits")] == [True, True]
    assert not await infer(k1, "digits")  # both keys of the subject count on digits
    assert await infer(k2, "iris")  # another model: another counter
    other = await principal(redis)
    assert await infer(other, "digits")  # another subject: another counter


async def test_device_windows_apply_only_to_proved_requests(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    quota = (Window("minute", 100, 60), Window("device_minute", 1, 60, ("device",)))
    plain = await principal(redis)
    assert [w.window.name for w in (await check(lim, plain, quota)).windows] == ["minute"]
    bound = await principal(redis, device=True)
    first = await check(lim, bound, quota)
    assert first.allowed and [w.window.name for w in first.windows] == ["minute", "device_minute"]
    assert not (await check(lim, bound, quota)).allowed


async def test_project_windows_count_the_models_project(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    project = f"proj-{secrets.token_hex(3)}"
    quota = (Window("project_minute", 2, 60, ("project",)),)
    decision = PolicyDecision(True, 200, "ok", quota, project=project)
    results = [
        (await lim.check(await principal(redis), quota, view(fresh_net(), m), decision)).allowed
        for m in ("digits", "iris", "digits")
    ]
    assert results == [True, True, False]


# ------------------------------------------------------------------ state in the same call


async def test_revoked_credential_is_refused_in_the_same_call(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock)
    p = await principal(redis)
    assert (await lim.check(p, MINUTE5, *anywhere(MINUTE5))).allowed
    await redis.hset(p.state_key, "status", "revoked")
    with pytest.raises(Denied) as info:
        await lim.check(p, MINUTE5, *anywhere(MINUTE5))
    assert info.value.status is Status.UNAUTHENTICATED and info.value.reason is Reason.KEY_REVOKED
    await redis.hset(p.state_key, "status", "active")
    assert (await lim.check(p, MINUTE5, *anywhere(MINUTE5))).windows[
        0
    ].remaining == 3  # the refusal was free


async def test_missing_credential_record_is_refused(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock)
    p = await principal(redis)
    await redis.delete(p.state_key)  # e.g. Redis lost its data
    with pytest.raises(Denied):
        await lim.check(p, MINUTE5, *anywhere(MINUTE5))


async def test_a_replayed_dpop_proof_is_refused_in_the_same_call(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock)
    p = with_proof(await principal(redis, device=True))
    assert (await check(lim, p, MINUTE5)).allowed
    with pytest.raises(Denied) as info:
        await check(lim, p, MINUTE5)
    assert info.value.reason is Reason.DPOP_REPLAY


# ------------------------------------------------------------------ quarantine


@pytest.mark.parametrize("kind", ["subject", "device", "prefix"])
async def test_quarantine_and_release(redis: Any, clock: Clock, kind: str) -> None:
    lim = limiter(redis, clock)
    store = ThrottleStore(redis, clock=clock)
    p = await principal(redis, device=True)
    ip = fresh_net()
    target = {"subject": p.subject, "device": p.device.thumbprint, "prefix": ip}[kind]
    assert (await check(lim, p, MINUTE5, ip)).allowed
    await store.quarantine(kind, target, 600, "probing the cancer model")
    denied = await check(lim, p, MINUTE5, ip)
    assert not denied.allowed and denied.reason is Reason.QUARANTINED
    assert 590 <= denied.retry_after <= 600
    listed = {(q["kind"], q["target"]): q for q in await store.quarantines()}
    key = (kind, target if kind != "prefix" else ip.rsplit(".", 1)[0] + ".0/24")
    assert listed[key]["cause"] == "probing the cancer model" and listed[key]["by"] == "cli"
    assert await store.release(kind, target)
    clock.now += 2.5  # the local cache trusts its entry for overlimit_cache_max_age (2 s)
    assert (await check(lim, p, MINUTE5, ip)).allowed


async def test_a_subject_over_its_limits_repeatedly_is_quarantined(
    redis: Any, clock: Clock
) -> None:
    lim = limiter(redis, clock, strikes=3, strike_period=600, strike_quarantine=900)
    p = await principal(redis)
    quota = (Window("second", 1, 1),)
    for episode in range(3):  # three episodes: over the limit, then room comes back
        assert (await lim.check(p, quota, *anywhere(quota))).allowed
        for _ in range(3):  # retrying too early within one episode is one strike
            reason = (await lim.check(p, quota, *anywhere(quota))).reason
            assert reason is Reason.RATE_LIMITED or episode == 2
            clock.now += 0.01
        clock.now += 1.2
    denied = await lim.check(p, quota, *anywhere(quota))
    assert denied.reason is Reason.QUARANTINED and denied.retry_after > 800
    entries = {q["target"]: q for q in await ThrottleStore(redis).quarantines()}
    assert entries[p.subject]["by"] == "auto" and "strikes" in entries[p.subject]["cause"]


async def test_failed_authentications_quarantine_the_source_prefix(
    redis: Any, clock: Clock
) -> None:
    lim = limiter(redis, clock, auth_failure_limit=5, auth_failure_quarantine=120)
    ip = fresh_net()
    for _ in range(5):
        await lim.auth_failed(view(ip))  # still a 401
    with pytest.raises(Denied) as info:
        await lim.auth_failed(view(ip))  # the sixth: the prefix is quarantined
    assert info.value.status is Status.RATE_LIMITED and info.value.reason is Reason.QUARANTINED
    assert info.value.limits is not None and 115 <= info.value.limits.retry_after <= 120
    # this worker now refuses the prefix before authentication, without Redis
    with pytest.raises(Denied):
        lim.precheck(view(ip.rsplit(".", 1)[0] + ".200"))
    lim.precheck(view(fresh_net()))  # another network: nothing
    # another worker (no local entry) refuses a valid credential from that prefix in its call
    other = limiter(redis, clock)
    result = await check(other, await principal(redis), MINUTE5, ip)
    assert result.reason is Reason.QUARANTINED


# ------------------------------------------------------------------ adaptive throttling


async def test_risk_multiplier_scales_the_subjects_own_windows_only(
    redis: Any, clock: Clock
) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    p = await principal(redis)
    await ThrottleStore(redis).set_risk(p.subject, 0.5, 600, "odd query pattern")
    quota = (Window("minute", 10, 60), Window("net", 10, 60, ("source_prefix",)))
    result = await check(lim, p, quota)
    assert [s.window.limit for s in result.windows] == [5, 10]
    assert [s.remaining for s in result.windows] == [4, 9]


async def test_threat_level_halves_the_limit_and_reverts_after_its_ttl(
    redis: Any, clock: Clock
) -> None:
    lim = limiter(redis, clock, local_cache_size=0)
    store = ThrottleStore(redis, clock=clock)
    try:
        await store.set_threat("elevated", ttl=30, reason="test")
        await lim.threat.poll_once()
        p = await principal(redis)
        quota = (Window("minute", 6, 60),)
        admitted = 0
        while (await check(lim, p, quota)).allowed:
            admitted += 1
        assert admitted == 3  # 6 x 0.5 (the policy's factor for elevated)
        clock.now += 31  # past the level's TTL: back to normal
        assert lim.threat.level == "normal"
        result = await check(lim, p, quota)
        assert result.allowed and result.windows[0].window.limit == 6
    finally:
        await store.clear_threat()


# ------------------------------------------------------------------ cost


async def test_one_round_trip_per_decision(redis: Any, clock: Clock) -> None:
    """1,000 decisions with every check there is: the key record, the device record, a DPoP
    jti, three quarantine flags, the risk multiplier, the strike counter, four windows of three
    tags. Single Redis: exactly one EVALSHA per decision and no other command from the client.
    Cluster: one EVALSHA per slot the decision touches, sent together."""
    lim = limiter(redis, clock, local_cache_size=0)
    base = await principal(redis, device=True)
    quota = (
        Window("second", 10_000, 1),
        Window("minute", 100_000, 60),
        Window("net", 100_000, 60, ("source_prefix",)),
        Window("device", 100_000, 60, ("device",)),
    )
    ip = fresh_net()
    await check(lim, with_proof(base), quota, ip)  # script loaded
    before = await _commandstats(redis)
    n = 1000
    for _ in range(n):
        assert (await check(lim, with_proof(base), quota, ip)).allowed
    after = await _commandstats(redis)
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    slots = 1
    if isinstance(redis, RedisCluster):  # {key:..}, {sub:..}, {pfx:..}, {dev:..}
        tags = [subject_tag(base.subject), prefix_tag(source_prefix(ip))]
        keys = [base.state_key] + [f"{{{t}}}" for t in (*tags, device_tag(base.device.thumbprint))]
        slots = len({key_slot(k.encode()) for k in keys})
    assert calls["cmdstat_evalsha"] == n * slots
    # commandstats also counts what the script runs inside Redis; nothing else ran
    inside = {
        "cmdstat_hget",
        "cmdstat_pttl",
        "cmdstat_set",
        "cmdstat_hgetall",
        "cmdstat_hincrby",
        "cmdstat_hdel",
        "cmdstat_pexpire",
        "cmdstat_info",
        "cmdstat_cluster|nodes",
        "cmdstat_cluster|slots",
        "cmdstat_command",
    }
    assert {k for k, v in calls.items() if v} - inside == {"cmdstat_evalsha"}
    print(f"Redis calls per decision: {calls['cmdstat_evalsha'] / n:.3f} EVALSHA")


async def _commandstats(redis: Any) -> dict[str, int]:
    if isinstance(redis, RedisCluster):
        per_node = await redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        total: dict[str, int] = {}
        for stats in per_node.values():
            for k, v in stats.items():
                total[k] = total.get(k, 0) + v["calls"]
        return total
    return {k: v["calls"] for k, v in (await redis.info("commandstats")).items()}


async def test_the_local_cache_keeps_a_flood_away_from_redis(redis: Any, clock: Clock) -> None:
    lim = limiter(redis, clock)
    p = await principal(redis)
    for _ in range(5):
        assert (await lim.check(p, MINUTE5, *anywhere(MINUTE5))).allowed
    first = await lim.check(p, MINUTE5, *anywhere(MINUTE5))
    assert not first.allowed
    before = await _commandstats(redis)
    retries = []
    for _ in range(100):
        denied = await lim.check(p, MINUTE5, *anywhere(MINUTE5))
        assert not denied.allowed and denied.detail == "window minute (local)"
        retries.append(denied.retry_after)
        clock.now += 0.01
    after = await _commandstats(redis)
    assert after.get("cmdstat_evalsha", 0) == before.get("cmdstat_evalsha", 0)
    assert retries[0] == first.retry_after and retries[-1] >= first.retry_after - 1
    # past the entry's trusted age the next request asks Redis again (and is still denied)
    clock.now += 2
    assert (await lim.check(p, MINUTE5, *anywhere(MINUTE5))).detail == "window minute"


# ------------------------------------------------------------------ Redis outage


async def test_redis_unreachable_fails_closed_unless_the_model_is_fail_open(
    clock: Clock,
) -> None:
    dead = redis_client(Settings(redis_url="redis://127.0.0.1:1/0", redis_timeout=0.2))
    lim = Limiter(
        dead, timeout=0.2, clock=clock, config=LimiterConfig(), threat=ThreatWatcher(dead)
    )
    # a JWT: no key or device state to vouch for (test_redis_fallback.py covers those)
    p = Principal("a", (), (), "t", "jwt", "x")
    with pytest.raises(Denied) as info:
        await lim.check(p, MINUTE5, view(), policy(MINUTE5))
    assert info.value.status is Status.UNAVAILABLE and info.value.reason is Reason.REDIS_UNAVAILABLE
    # fail_mode open: this worker's in-process limiter stands in, with the same windows
    results = [await lim.check(p, MINUTE5, view(), policy(MINUTE5, "open")) for _ in range(7)]
    assert [r.allowed for r in results] == [True] * 5 + [False] * 2
    assert {r.detail for r in results} == {"fallback"}
    assert results[-1].retry_after > 0
    await dead.aclose()


async def test_a_hung_redis_never_holds_a_decision_past_the_budget(clock: Clock) -> None:
    """A server that accepts and never answers: the decision ends at the budget, with 503."""
    server = await asyncio.start_server(lambda r, w: asyncio.sleep(3600), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = redis_client(Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.15))
    lim = Limiter(
        hung, timeout=0.15, clock=clock, config=LimiterConfig(), threat=ThreatWatcher(hung)
    )
    p = Principal("a", (), (), "t", "jwt", "x")
    for fail_mode in ("closed", "open"):
        started = time.perf_counter()
        try:
            await lim.check(p, MINUTE5, view(), policy(MINUTE5, fail_mode))
        except Denied as denied:
            assert fail_mode == "closed" and denied.status is Status.UNAVAILABLE
        assert time.perf_counter() - started < 0.4
    await hung.aclose()
    server.close()


async def test_key_schema_uses_one_tag_per_call_group(redis: Any, clock: Clock) -> None:
    """Every key the limiter wrote for a subject's own windows is under the subject's tag."""
    del clock
    if not isinstance(redis, aioredis.Redis):
        pytest.skip("single Redis: KEYS over one node")
    lim = limiter(redis, Clock(time.time()))
    p = await principal(redis)
    await check(lim, p, (Window("minute", 5, 60), Window("net", 5, 60, ("source_prefix",))))
    own = [k.decode() for k in await redis.keys(f"ea:{{{subject_tag(p.subject)}}}:rl:*")]
    assert len(own) == 1 and own[0].endswith(f"c=key:{p.credential_id}")


# ------------------------------------------------------------------ policy denials


async def test_policy_denials_quarantine_the_subject_then_the_network(
    redis: Any, clock: Clock
) -> None:
    """Finding 3: 403s count per subject and per source prefix (one call on a single Redis,
    one per slot on a cluster); past a limit the subject or network is quarantined, and the
    worker then refuses the subject before the policy is asked (admit)."""
    lim = limiter(redis, clock, policy_denial_limit=3, policy_denial_prefix_limit=5)
    ip = fresh_net()
    first, second = await principal(redis), await principal(redis)
    for _ in range(3):
        await lim.policy_denied(view(ip), first)
    with pytest.raises(Denied) as info:
        await lim.policy_denied(view(ip), first)
    assert (info.value.status, info.value.detail) == (Status.RATE_LIMITED, "quarantine subject")
    with pytest.raises(Denied):
        lim.admit(first)  # in-process: no OPA query for this subject now
    lim.admit(second)
    listed = await ThrottleStore(redis).quarantines()
    assert any(q["target"] == first.subject and "policy_denials" in q["cause"] for q in listed)
    await lim.policy_denied(view(ip), second)  # the network's fifth denial
    with pytest.raises(Denied) as info:
        await lim.policy_denied(view(ip), second)
    assert info.value.detail == "quarantine prefix"
    with pytest.raises(Denied):
        lim.precheck(view(ip))  # the whole network, before authentication
    await ThrottleStore(redis).release("subject", first.subject)
    await ThrottleStore(redis).release("prefix", ip)
