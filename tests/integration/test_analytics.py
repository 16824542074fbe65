"""The analytics worker against real Redis and OPA: shard ownership, takeover, per-tenant
routing, and the responses it writes (never looser than what is there)."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest
import redis.asyncio as aioredis

from extauthz.analytics.actions import ActionLog, ActionStore
from extauthz.analytics.events import QueryEmitter
from extauthz.analytics.profile import build_profile
from extauthz.analytics.worker import Worker
from extauthz.dev.devstack import Stack
from extauthz.limits.throttle import ThrottleStore
from extauthz.store.schema import ANALYTICS_WORKERS_KEY as WORKERS_KEY
from extauthz.store.schema import analytics_owner_key as owner_key
from extauthz.store.schema import analytics_profile_key as profile_key
from extauthz.store.schema import analytics_stream as stream_key
from extauthz.store.schema import quarantine_key, risk_key, subject_tag
from extauthz.types import Decision, ModelRoute, Principal, Reason, RequestView, Status

pytestmark = pytest.mark.integration

SHARDS = 8


async def _clean(redis: aioredis.Redis) -> None:
    """Only analytics' own keys and this file's subjects: other tests share this Redis."""
    subjects = [
        "mallory",
        "burst",
        "lagged",
        "sybil-a",
        "sybil-b",
        "sybil-c",
        "loner",
        *[f"tenant-{i}" for i in range(12)],
    ]
    patterns = ["ea:{aq:*", "ea:analytics:*", "ea:{pfx:*}:an*"]
    patterns += [f"ea:{{{subject_tag(s)}}}:*" for s in subjects]
    for pattern in patterns:
        keys = [k async for k in redis.scan_iter(match=pattern)]
        if keys:
            await redis.delete(*keys)


def _worker(redis: aioredis.Redis, stack: Stack, tmp_path, name: str) -> Worker:  # type: ignore[no-untyped-def]
    actions = ActionStore(redis, ActionLog(str(tmp_path / "decisions.log")))
    return Worker(redis, stack.settings.opa_url, actions, shards=SHARDS, lease=1.0, name=name)


async def test_shards_are_split_and_a_dead_workers_shards_taken_over(
    redis: aioredis.Redis, stack: Stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    await _clean(redis)
    one, two = _worker(redis, stack, tmp_path, "one"), _worker(redis, stack, tmp_path, "two")
    await one.claim()
    assert one.owned == set(range(SHARDS))  # alone: every shard
    await two.claim()  # two joins: nothing free yet
    await one.claim()  # one sees two live workers and hands half over
    await two.claim()
    assert len(one.owned) == len(two.owned) == SHARDS // 2
    assert one.owned.isdisjoint(two.owned)
    for shard in one.owned:
        assert await redis.get(owner_key(shard)) == b"one"
    # one dies without a word: its leases lapse, its heartbeat ages out, two takes over
    await asyncio.sleep(3.2)
    await two.claim()
    assert two.owned == set(range(SHARDS))
    assert await redis.zrange(WORKERS_KEY, 0, -1) == [b"two"]
    await two.release_all()
    assert not await redis.exists(*[owner_key(s) for s in range(SHARDS)])
    await one.close()
    await two.close()


def _view(body: bytes, ip: str) -> RequestView:
    return RequestView(
        "r", "POST", "/v2/models/m/infer", "h", ip, {}, ModelRoute("m", "", "infer"), body
    )


def _allowed(subject: str) -> Decision:
    principal = Principal(subject, ("analyst",), ("vision",), "standard", "api_key", subject)
    return Decision(Status.OK, Reason.OK, "d", principal)


def _body(row: list[float]) -> bytes:
    doc = {"inputs": [{"name": "x", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
    return json.dumps(doc).encode()


async def test_every_event_of_a_tenant_reaches_the_one_worker_owning_its_shard(
    redis: aioredis.Redis, stack: Stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    await _clean(redis)
    rng = random.Random(0)
    sample = [[rng.gauss(0, 1) for _ in range(8)] for _ in range(100)]
    await redis.set(profile_key("m"), build_profile("m", sample).to_json())
    one, two = _worker(redis, stack, tmp_path, "one"), _worker(redis, stack, tmp_path, "two")
    await routed_to_one_owner(redis, one, two, "tenant")
    for shard in range(SHARDS):  # read and acknowledged
        groups = await redis.xinfo_groups(stream_key(shard))
        assert groups[0]["pending"] == 0 and groups[0]["lag"] == 0
    await one.close()
    await two.close()


async def routed_to_one_owner(redis: Any, one: Worker, two: Worker, prefix: str) -> None:
    """Two workers split the shards; 12 tenants send 5 events each: every tenant's five reach
    one worker, none the other (also run on a Redis Cluster: test_analytics_cluster.py)."""
    for w in (one, two, one, two):
        await w.claim()
    assert len(one.owned) == len(two.owned) == SHARDS // 2
    rng = random.Random(0)
    sample = [[rng.gauss(0, 1) for _ in range(8)] for _ in range(100)]
    for w in (one, two):
        await w.refresh()
        w.config.profiles["m"] = build_profile("m", sample)  # "m" is not in the catalog
    emitter = QueryEmitter(redis, shards=SHARDS, maxlen=1000)
    subjects = [f"{prefix}-{i}" for i in range(12)]
    for _ in range(5):
        for s in subjects:
            emitter.emit(_view(_body([rng.gauss(0, 1) for _ in range(8)]), "10.9.8.7"), _allowed(s))
    assert await emitter.flush() == 60
    assert await one.read_once() + await two.read_once() == 60
    for s in subjects:
        rows = [w._tenants.get(s, "m").rows for w in (one, two)]
        assert sorted(rows) == [0, 5], (s, rows)  # all five at one worker, none at the other


async def test_responses_never_loosen_what_is_there_and_clear_undoes_them(
    redis: aioredis.Redis, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    await _clean(redis)
    log = tmp_path / "decisions.log"
    store = ActionStore(redis, ActionLog(str(log)))
    await ThrottleStore(redis).set_risk("mallory", 0.2, 7200, "operator")
    response = {
        "level": 4,
        "risk": 0.5,
        "degrade": 2,
        "quarantine": 60,
        "ttl": 600,
        "over": ["ood"],
    }
    await store.apply("mallory", "digits", response, {"ood": 0.9}, {"rows": 50})
    risk = await redis.hgetall(risk_key("mallory"))
    assert float(risk[b"multiplier"]) == 0.2  # the operator's lower multiplier stays
    assert risk[b"degrade"] == b"2"
    assert 7000 < await redis.ttl(risk_key("mallory")) <= 7200  # and its longer TTL
    quarantine = await redis.hgetall(quarantine_key(subject_tag("mallory")))
    assert (
        quarantine[b"by"] == b"analytics"
        and 0 < await redis.ttl(quarantine_key(subject_tag("mallory"))) <= 60
    )
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert logged[0]["kind"] == "analytics_action" and logged[0]["evidence"] == {"rows": 50}
    shown = await store.show("mallory")
    assert shown["actions"][0]["level"] == 4 and shown["quarantine"]
    await store.clear("mallory")
    assert not await redis.exists(risk_key("mallory"), quarantine_key(subject_tag("mallory")))
    assert (await store.show("mallory"))["cleared_at"] > 0


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def _clocked_worker(
    redis: aioredis.Redis, stack: Stack, tmp_path: Any, rng: random.Random
) -> tuple[Worker, _Clock]:
    """A worker on our clock owning every shard, with model "m" profiled from 200 rows."""
    sample = [[rng.gauss(0, 1) for _ in range(8)] for _ in range(200)]
    clock = _Clock()
    actions = ActionStore(redis, ActionLog(str(tmp_path / "decisions.log")), clock=clock)
    worker = Worker(redis, stack.settings.opa_url, actions, shards=SHARDS, clock=clock)
    await worker.claim()
    await worker.refresh()
    worker.config.profiles["m"] = build_profile("m", sample)
    return worker, clock


async def test_a_burst_that_stops_is_still_judged_on_all_its_rows_after_the_delay(
    redis: aioredis.Redis, stack: Stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Real OPA answers data.extauthz.analytics.response; the worker's clock is ours."""
    await _clean(redis)
    rng = random.Random(1)
    worker, clock = await _clocked_worker(redis, stack, tmp_path, rng)
    emitter = QueryEmitter(redis, shards=SHARDS, maxlen=1000)

    async def send(n: int) -> None:
        for _ in range(n):
            noise = [rng.uniform(-20, 20) for _ in range(8)]
            emitter.emit(_view(_body(noise), "10.1.1.1"), _allowed("burst"))
        await emitter.flush()
        await worker.read_once()

    await send(5)  # evaluated: too few rows to judge (ood judges from 10)
    clock.now += 0.5
    await send(40)  # within the second: not asked yet
    assert worker._pending == {}
    await worker.evaluate_dirty()
    assert worker._pending == {}  # still within the second
    clock.now += 0.6
    await worker.evaluate_dirty()
    due, _, scores, response, _ = worker._pending["burst"]
    assert scores["ood"] >= 0.9 and response["level"] >= 1
    delay = worker.config.detectors["delay"]
    assert clock.now + delay["min"] <= due <= clock.now + delay["max"]  # the policy's delay
    assert await worker.apply_due() == 0
    assert not await redis.exists(risk_key("burst"))
    clock.now = due
    assert await worker.apply_due() == 1
    risk = await redis.hgetall(risk_key("burst"))
    assert float(risk[b"multiplier"]) < 1 and int(risk[b"degrade"]) >= 1
    await worker.release_all()
    await worker.close()


async def test_a_worker_far_behind_sheds_by_sampling_and_counts_it(
    redis: aioredis.Redis, stack: Stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from extauthz.metrics import ANALYTICS_ROWS

    await _clean(redis)
    rng = random.Random(2)
    sample = [[rng.gauss(0, 1) for _ in range(8)] for _ in range(100)]
    actions = ActionStore(redis, ActionLog(str(tmp_path / "decisions.log")))
    worker = Worker(redis, stack.settings.opa_url, actions, shards=1, shed_lag=10)
    await worker.claim()
    await worker.refresh()
    worker.config.profiles["m"] = build_profile("m", sample)
    emitter = QueryEmitter(redis, shards=1, maxlen=1000)
    for _ in range(40):
        emitter.emit(
            _view(_body([rng.gauss(0, 1) for _ in range(8)]), "10.2.2.2"), _allowed("lagged")
        )
    await emitter.flush()
    assert await worker.lag() == 40 and worker.keep_every == 5
    shed = ANALYTICS_ROWS.labels("shed")._value.get()
    assert await worker.read_once() == 40
    assert worker._tenants.get("lagged", "m").rows == 8  # one event in five scored
    assert ANALYTICS_ROWS.labels("shed")._value.get() == shed + 32
    assert await worker.lag() == 0 and worker.keep_every == 1
    await worker.release_all()
    await worker.close()


async def test_sybils_on_different_networks_sharing_fingerprints_are_scored_shared(
    redis: aioredis.Redis, stack: Stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Three keys from three networks walk in small steps around one point (one boundary
    search split over Sybils); a fourth walks elsewhere alone."""
    await _clean(redis)
    await sybil_scenario(redis, stack, tmp_path)


async def sybil_scenario(redis: Any, stack: Stack, tmp_path: Any) -> None:
    """(also run on a Redis Cluster: test_analytics_cluster.py)"""
    rng = random.Random(4)
    sample = [[rng.gauss(0, 1) for _ in range(8)] for _ in range(200)]
    actions = ActionStore(redis, ActionLog(str(tmp_path / "decisions.log")))
    worker = Worker(redis, stack.settings.opa_url, actions, shards=SHARDS)
    await worker.claim()
    await worker.refresh()
    profile = build_profile("m", sample)
    worker.config.profiles["m"] = profile
    emitter = QueryEmitter(redis, shards=SHARDS, maxlen=1000)
    centre, elsewhere = [0.3] * 8, [-0.9] * 8
    tiny = profile.step / 50 / max(profile.scale)  # far below a step, in raw units
    for i in range(20):
        for n, subject in enumerate(("sybil-a", "sybil-b", "sybil-c")):
            row = [x + tiny * (i + 0.3 * n) for x in centre]
            emitter.emit(_view(_body(row), f"10.{n}.0.1"), _allowed(subject))
        row = [x + tiny * i for x in elsewhere]
        emitter.emit(_view(_body(row), "10.9.0.1"), _allowed("loner"))
        await emitter.flush()  # one round at a time, as they arrive interleaved
        await worker.read_once()
    from extauthz.analytics.detectors import tenant_scores

    for subject in ("sybil-a", "sybil-b", "sybil-c"):
        scores, evidence = tenant_scores(profile, worker._tenants.get(subject, "m"))
        assert scores["neardup"] > 0.5 and scores["shared"] > 0.5, (subject, scores)
    loner, _ = tenant_scores(profile, worker._tenants.get("loner", "m"))
    assert loner["neardup"] > 0.5 and loner["shared"] == 0
    await worker.release_all()
    await worker.close()


async def test_opa_away_the_worker_keeps_scoring_and_asks_again_later(
    redis: aioredis.Redis, stack: Stack, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from extauthz.dev.runner import free_ports

    await _clean(redis)
    rng = random.Random(6)
    worker, clock = await _clocked_worker(redis, stack, tmp_path, rng)
    worker._opa = f"http://127.0.0.1:{free_ports(1)[0]}"  # nothing listens there
    emitter = QueryEmitter(redis, shards=SHARDS, maxlen=1000)
    for _ in range(40):
        noise = [rng.uniform(-20, 20) for _ in range(8)]
        emitter.emit(_view(_body(noise), "10.3.3.3"), _allowed("opa-away"))
    await emitter.flush()
    assert await worker.read_once() == 40  # scored, acknowledged, no exception
    assert ("opa-away", "m") in worker._dirty and worker._pending == {}
    worker._opa = stack.settings.opa_url.rstrip("/")  # back
    clock.now += 1.1
    await worker.evaluate_dirty()
    assert worker._pending["opa-away"][3]["level"] >= 1
    await worker.release_all()
    await worker.close()
