"""`extauthz analytics run`: read the query stream, score tenants, write graduated responses.

Sharding (why): per-tenant detectors need every event of a tenant, but a consumer group hands
one stream's entries to whichever consumer asks. So the emitter writes each subject's events
to one of N shard streams (CRC32 of the subject), and each shard has exactly one owner at a
time: a lease key (SET NX PX) the owner renews. Workers heartbeat into a zset and each claims
about N / live-workers shards, releasing extras when more workers join; a dead worker's
shards are claimed when its leases lapse, and its pending entries taken over with XAUTOCLAIM.
Within a shard the consumer group still gives at-least-once reading, trimming (MAXLEN) and lag
(XINFO GROUPS). State lives in the owner's memory (bounded); a shard that changes owner starts
its tenants afresh. The network detector (e) spans shards, so it is counted in Redis.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import socket
import time
from collections import defaultdict
from typing import Any

import aiohttp
from redis.exceptions import RedisError, ResponseError

from extauthz.analytics.actions import ActionStore
from extauthz.analytics.detectors import Tenants, score_row, tenant_scores
from extauthz.analytics.events import QueryEvent
from extauthz.analytics.profile import Profile
from extauthz.clock import Clock, system_clock
from extauthz.metrics import ANALYTICS_ACTIONS, ANALYTICS_LAG, ANALYTICS_ROWS, ANALYTICS_SECONDS
from extauthz.store.schema import ANALYTICS_GROUP as GROUP
from extauthz.store.schema import ANALYTICS_WORKERS_KEY as WORKERS_KEY
from extauthz.store.schema import analytics_fingerprint_key as fingerprint_key
from extauthz.store.schema import analytics_network_key as network_key
from extauthz.store.schema import analytics_network_subjects_key as network_subjects_key
from extauthz.store.schema import analytics_owner_key as owner_key
from extauthz.store.schema import analytics_profile_key as profile_key
from extauthz.store.schema import analytics_stream as stream_key
from extauthz.v2body import read_body

log = logging.getLogger(__name__)

_RENEW = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then "
    "return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)
_ERRORS = (RedisError, OSError, TimeoutError)
BATCH = 256
EVALUATE_EVERY = 1.0  # seconds between two policy questions about one tenant
SHARED_BY = 3  # a fingerprint is shared when this many subjects (the tenant included) sent it


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{random.randrange(16**4):04x}"  # noqa: S311


class Config:
    """What the policy says (thresholds, steps, delays; score outputs per model) and the
    registered profiles; refreshed every `interval` seconds."""

    def __init__(self) -> None:
        self.detectors: dict[str, Any] = {}
        self.score_outputs: dict[str, frozenset[str]] = {}
        self.profiles: dict[str, Profile] = {}

    def suspicious(self, scores: dict[str, float]) -> bool:
        """Worth asking the policy: some score at or over its threshold."""
        thresholds = self.detectors.get("thresholds", {})
        return any(0 < thresholds.get(k, 0) <= v for k, v in scores.items())


class Worker:
    def __init__(
        self,
        redis: Any,
        opa_url: str,
        actions: ActionStore,
        shards: int = 8,
        lease: float = 5.0,
        rows_per_event: int = 8,
        tenants: int = 4_000,
        shed_lag: int = 5_000,
        clock: Clock = system_clock,
        name: str = "",
    ) -> None:
        self._redis = redis
        self._opa = opa_url.rstrip("/")
        self._actions = actions
        self._shards = shards
        self._lease_ms = int(lease * 1000)
        self._rows_per_event = rows_per_event
        self._tenants = Tenants(tenants)
        self._shed_lag = shed_lag
        self.keep_every = 1  # 1: every event is scored (see lag())
        self._clock = clock
        self.name = name or worker_id()
        self.config = Config()
        self.owned: set[int] = set()
        self._asked: dict[tuple[str, str], float] = {}  # (subject, model) -> last evaluated
        # tenants whose last rows came within EVALUATE_EVERY of an evaluation: evaluated later,
        # so a burst that then stops is still judged on all its rows
        self._dirty: dict[tuple[str, str], tuple[float, int, int]] = {}
        self._applied: dict[str, tuple[int, float]] = {}  # subject -> (level, until)
        self._pending: dict[str, tuple[float, str, dict, dict, dict]] = {}
        self._cleared: dict[str, int] = {}
        self._prints: list[tuple[Any, str, str, str]] = []  # (state, model, fp, subject)
        self._session: aiohttp.ClientSession | None = None

    # ---- leases
    async def claim(self) -> None:
        now_ms = int(self._clock() * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zadd(WORKERS_KEY, {self.name: now_ms})
        pipe.zremrangebyscore(WORKERS_KEY, "-inf", now_ms - 3 * self._lease_ms)
        pipe.zcard(WORKERS_KEY)
        live = (await pipe.execute())[2]
        target = math.ceil(self._shards / max(1, live))
        for shard in sorted(self.owned):
            if not await self._redis.eval(_RENEW, 1, owner_key(shard), self.name, self._lease_ms):
                self.owned.discard(shard)
                log.warning("shard %d lost", shard)
        while len(self.owned) > target:  # another worker joined: hand some over
            shard = max(self.owned)
            await self._redis.eval(_RELEASE, 1, owner_key(shard), self.name)
            self.owned.discard(shard)
        start = random.randrange(self._shards)  # noqa: S311 - spread first claims
        for i in range(self._shards):
            if len(self.owned) >= target:
                break
            shard = (start + i) % self._shards
            if shard in self.owned:
                continue
            if await self._redis.set(owner_key(shard), self.name, nx=True, px=self._lease_ms):
                await self._take_over(shard)
                self.owned.add(shard)

    async def _take_over(self, shard: int) -> None:
        key = stream_key(shard)
        try:
            await self._redis.xgroup_create(key, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # what a previous owner read but never acknowledged
        _, claimed, *_ = await self._redis.xautoclaim(key, GROUP, self.name, 0, "0-0", count=BATCH)
        if claimed:
            await self._process(key, claimed)

    async def release_all(self) -> None:
        for shard in sorted(self.owned):
            await self._redis.eval(_RELEASE, 1, owner_key(shard), self.name)
        self.owned.clear()
        await self._redis.zrem(WORKERS_KEY, self.name)

    # ---- configuration
    async def refresh(self) -> None:
        session = self._http()
        data = {}
        for name in ("detectors", "catalog"):  # data only: no rule is evaluated
            async with session.get(f"{self._opa}/v1/data/extauthz/{name}") as resp:
                data[name] = (await resp.json()).get("result", {})
        self.config.detectors = data["detectors"]
        self.config.score_outputs = {
            name: frozenset(entry.get("score_outputs", []))
            for name, entry in data["catalog"].items()
        }
        profiles = {}
        for model in self.config.score_outputs:
            raw = await self._redis.get(profile_key(model))
            if not raw:
                continue
            try:
                profiles[model] = Profile.from_json(raw)
            except (KeyError, ValueError, TypeError) as exc:  # e.g. an older format: register again
                log.warning("profile of %s unreadable, not scored: %r", model, exc)
        self.config.profiles = profiles

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ---- reading
    async def read_once(self) -> int:
        """One XREADGROUP per owned shard; returns the entries processed."""
        done = 0
        for shard in sorted(self.owned):
            key = stream_key(shard)
            try:
                reply = await self._redis.xreadgroup(GROUP, self.name, {key: ">"}, count=BATCH)
            except ResponseError as exc:  # the stream was deleted under us: recreate the group
                if "NOGROUP" not in str(exc):
                    raise
                await self._take_over(shard)
                continue
            for _, entries in reply or []:
                done += await self._process(key, entries)
        return done

    async def lag(self) -> int:
        """The largest lag of an owned shard; past `shed_lag`, only every n-th event is scored
        (the rest counted as `shed`) until the worker has caught up."""
        worst = 0
        for shard in sorted(self.owned):
            for group in await self._redis.xinfo_groups(stream_key(shard)):
                if group.get("name") in (GROUP, GROUP.encode()):
                    lag = int(group.get("lag") or 0)
                    ANALYTICS_LAG.labels(str(shard)).set(lag)
                    worst = max(worst, lag)
        self.keep_every = 1 if worst <= self._shed_lag else min(8, worst // self._shed_lag + 1)
        return worst

    async def _process(self, key: str, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> int:
        network: dict[str, list[Any]] = defaultdict(lambda: [0, 0, set()])
        touched: dict[tuple[str, str], str] = {}
        self._prints = []
        for i, (_, fields) in enumerate(entries):
            if i % self.keep_every:
                ANALYTICS_ROWS.labels("shed").inc()
                continue
            try:
                event = QueryEvent.parse(fields)
            except (KeyError, ValueError):
                ANALYTICS_ROWS.labels("malformed").inc()
                continue
            flagged, rows = self._score_event(event)
            if rows:
                agg = network[event.prefix]
                agg[0] += rows
                agg[1] += flagged
                agg[2].add(event.subject)
                touched[(event.subject, event.model)] = event.prefix
        if entries:
            await self._redis.xack(key, GROUP, *[entry_id for entry_id, _ in entries])
        nets = await self._count_networks(network)
        await self._count_fingerprints()
        for (subject, model), prefix in touched.items():
            await self._evaluate(subject, model, nets.get(prefix, (0.0, 0, 0)))
        return len(entries)

    def _score_event(self, event: QueryEvent) -> tuple[int, int]:
        """(flagged rows, scored rows) of one event."""
        profile = self.config.profiles.get(event.model)
        if profile is None or not event.body:
            ANALYTICS_ROWS.labels("no_profile" if profile is None else "no_body").inc()
            return 0, 0
        body = read_body(event.body)
        rows = body.feature_rows()
        if not rows:
            ANALYTICS_ROWS.labels("unreadable").inc()
            return 0, 0
        if len(rows) > self._rows_per_event:  # evenly spaced rows of a large batch
            step = len(rows) / self._rows_per_event
            ANALYTICS_ROWS.labels("sampled_out").inc(len(rows) - self._rows_per_event)
            rows = tuple(rows[int(i * step)] for i in range(self._rows_per_event))
        scores = bool(self.config.score_outputs.get(event.model, frozenset()) & set(body.outputs))
        state = self._tenants.get(event.subject, event.model)
        if not state.first_ms:
            state.first_ms = event.ts_ms
        state.last_ms = event.ts_ms
        flagged = scored = 0
        for row in rows:
            if len(row) != profile.features:
                ANALYTICS_ROWS.labels("wrong_width").inc()
                continue
            started = time.perf_counter()
            flags = score_row(profile, state, row, scores)
            ANALYTICS_SECONDS.observe(time.perf_counter() - started)
            ANALYTICS_ROWS.labels("scored").inc()
            flagged += flags.ood or flags.near or flags.boundary
            scored += 1
            if flags.fingerprint:
                self._prints.append((state, event.model, flags.fingerprint, event.subject))
        return flagged, scored

    async def _count_networks(
        self, network: dict[str, list[Any]]
    ) -> dict[str, tuple[float, int, int]]:
        """(flagged share, rows, distinct subjects) per network over this and the last minute,
        across every worker (Redis counters)."""
        if not network:
            return {}
        minute = int(self._clock() // 60)
        pipe = self._redis.pipeline(transaction=False)
        for prefix, (rows, flagged, subjects) in network.items():
            counts, members = network_key(prefix, minute), network_subjects_key(prefix, minute)
            pipe.hincrby(counts, "n", rows)
            pipe.hincrby(counts, "flagged", flagged)
            pipe.pfadd(members, *subjects)
            pipe.expire(counts, 180)
            pipe.expire(members, 180)
            pipe.hmget(network_key(prefix, minute - 1), "n", "flagged")
            # (execute_command: redis-py refuses pfcount() in a Cluster pipeline even when, as
            # here, both keys carry one hash tag; the command itself is fine on one slot)
            pipe.execute_command("PFCOUNT", members, network_subjects_key(prefix, minute - 1))
        replies = await pipe.execute()
        result = {}
        for i, prefix in enumerate(network):
            n_now, f_now, _, _, _, before, subjects = replies[i * 7 : i * 7 + 7]
            n = n_now + int(before[0] or 0)
            f = f_now + int(before[1] or 0)
            result[prefix] = (f / n if n else 0.0, n, int(subjects))
        return result

    async def _count_fingerprints(self) -> None:
        """For each flagged row of the batch: did SHARED_BY subjects send its fingerprint within
        this and the last minute? (across every worker: Redis HyperLogLogs)"""
        prints, self._prints = self._prints, []
        if not prints:
            return
        minute = int(self._clock() // 60)
        senders: dict[tuple[str, str], set[str]] = defaultdict(set)
        for _, model, fp, subject in prints:
            senders[(model, fp)].add(subject)
        pipe = self._redis.pipeline(transaction=False)
        for (model, fp), subjects in senders.items():
            key = fingerprint_key(model, fp, minute)
            pipe.pfadd(key, *subjects)
            pipe.expire(key, 180)
            pipe.execute_command("PFCOUNT", key, fingerprint_key(model, fp, minute - 1))
        replies = await pipe.execute()
        counts = {mf: int(replies[i * 3 + 2]) for i, mf in enumerate(senders)}
        for state, model, fp, _ in prints:
            state.shared.append(counts[(model, fp)] >= SHARED_BY)

    # ---- deciding
    async def _evaluate(self, subject: str, model: str, net: tuple[float, int, int]) -> None:
        profile = self.config.profiles[model]
        state = self._tenants.get(subject, model)
        scores, evidence = tenant_scores(profile, state)
        scores["network"] = round(net[0], 4)
        evidence["network"] = {"rows": net[1], "subjects": net[2]}
        now = self._clock()
        if now - self._asked.get((subject, model), 0) < EVALUATE_EVERY:
            self._dirty[(subject, model)] = net  # evaluated once its second has passed
            return
        self._asked[(subject, model)] = now
        self._dirty.pop((subject, model), None)
        if len(self._asked) > 4 * len(self._tenants) + 1000:
            self._asked.clear()
        await self._actions.record(subject, model, scores, evidence)
        if not self.config.suspicious(scores):
            return
        if await self._was_cleared(subject, state):
            return
        try:
            response = await self._ask(scores, state.rows, net)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:  # OPA away: ask later
            log.warning("analytics: policy not asked about %s: %r", subject, exc)
            self._dirty[(subject, model)] = net
            return
        level = int(response.get("level", 0))
        applied, until = self._applied.get(subject, (0, 0.0))
        pending = self._pending.get(subject)
        if level <= (applied if until > now else 0) or (pending and pending[3]["level"] >= level):
            return
        # delayed (the attacker cannot tell which query tipped it), but an escalation never
        # postpones what was already due
        delay = response.get("delay", {})
        due = now + random.uniform(delay.get("min", 0), delay.get("max", 0))  # noqa: S311
        if pending:
            due = min(due, pending[0])
        self._pending[subject] = (due, model, scores, response, evidence)

    async def _was_cleared(self, subject: str, state: Any) -> bool:
        """An operator cleared the subject after these rows began: start its scores afresh."""
        cleared = await self._actions.cleared_at(subject)
        if cleared and cleared * 1000 > state.first_ms:
            if self._cleared.get(subject) != cleared:
                self._cleared[subject] = cleared
                self._applied.pop(subject, None)
                self._pending.pop(subject, None)
                state.history.clear()
                state.window.clear()
                state.shared.clear()
                state.rows = 0
                state.first_ms = cleared * 1000
                return True
        return False

    async def _ask(
        self, scores: dict[str, float], rows: int, net: tuple[float, int, int]
    ) -> dict[str, Any]:
        body = {
            "input": {
                "scores": scores,
                "rows": rows,
                "network": {"rows": net[1], "subjects": net[2]},
            }
        }
        async with self._http().post(
            f"{self._opa}/v1/data/extauthz/analytics/response", json=body
        ) as resp:
            return (await resp.json()).get("result", {})

    async def evaluate_dirty(self) -> None:
        now = self._clock()
        for (subject, model), net in list(self._dirty.items()):
            if now - self._asked.get((subject, model), 0) >= EVALUATE_EVERY:
                if model in self.config.profiles:
                    await self._evaluate(subject, model, net)
                else:
                    self._dirty.pop((subject, model), None)

    async def apply_due(self) -> int:
        now = self._clock()
        if len(self._applied) > 10 * len(self._tenants):  # forget responses that ended
            self._applied = {s: a for s, a in self._applied.items() if a[1] > now}
        due = [s for s, p in self._pending.items() if p[0] <= now]
        for subject in due:
            _, model, scores, response, evidence = self._pending.pop(subject)
            action = await self._actions.apply(subject, model, response, scores, evidence)
            self._applied[subject] = (action["level"], now + int(response["ttl"]))
            ANALYTICS_ACTIONS.labels(str(action["level"])).inc()
            log.warning(
                "analytics: %s level %d (%s)", subject, action["level"], ",".join(action["over"])
            )
        return len(due)

    # ---- the loop
    async def run(self, stop: asyncio.Event, refresh_every: float = 5.0) -> None:
        next_claim = next_refresh = 0.0
        try:
            while not stop.is_set():
                now = self._clock()
                try:
                    if now >= next_refresh:
                        next_refresh = now + refresh_every
                        try:
                            await self.refresh()
                        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                            log.warning("analytics config not refreshed (kept): %r", exc)
                        await self.lag()
                    if now >= next_claim:
                        await self.claim()
                        next_claim = now + self._lease_ms / 3000
                    done = await self.read_once()
                    await self.evaluate_dirty()
                    await self.apply_due()
                except (*_ERRORS, aiohttp.ClientError, ValueError) as exc:
                    log.warning("analytics worker: %s", exc)
                    done = 0
                    await asyncio.sleep(0.5)
                if not done:
                    try:
                        await asyncio.wait_for(stop.wait(), 0.05)
                    except TimeoutError:
                        pass
        finally:
            try:
                await self.release_all()
            except _ERRORS:
                pass
            await self.close()
