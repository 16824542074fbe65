"""What the limiter stage adds to a decision, and how many Redis commands it sends.

    .venv/bin/python -m bench.limiter_latency [--n 5000] [--no-cluster]

Times `Limiter.check()` (c=1, one decision after another) against a real Redis started for the
run — and a real 3-master Redis Cluster — with the standard tier's four windows (three per key,
one per /24) plus the key-record, quarantine, risk and strike checks the service makes. Also:
a plain PING (the round-trip floor), the in-process 429 of the local over-limit cache, and the
EVALSHA count per decision from INFO commandstats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from redis.asyncio.cluster import RedisCluster

from extauthz.authn.apikeys import key_record_name
from extauthz.dev.devstack import Stack, cluster_ports
from extauthz.limits.limiter import Limiter, LimiterConfig
from extauthz.threat import ThreatWatcher
from extauthz.types import ModelRoute, PolicyDecision, Principal, RequestView, Window
from extauthz.wiring import redis_client
from tests.conftest import stack_settings

STANDARD = (
    Window("second", 10**9, 1),
    Window("minute", 10**9, 60),
    Window("day", 10**9, 86400),
    Window("network_minute", 10**9, 60, ("source_prefix",)),
)
VIEW = RequestView(
    "r",
    "POST",
    "/v2/models/digits/infer",
    "h",
    "203.0.113.7",
    {},
    ModelRoute("digits", "", "infer"),
)


def summary(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)
    return {
        "median_us": round(statistics.median(ordered) / 1000, 1),
        "p90_us": round(ordered[int(0.9 * len(ordered))] / 1000, 1),
        "p99_us": round(ordered[int(0.99 * len(ordered))] / 1000, 1),
    }


async def evalsha_calls(redis: Any) -> int:
    if isinstance(redis, RedisCluster):
        per_node = await redis.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
        return sum(s.get("cmdstat_evalsha", {}).get("calls", 0) for s in per_node.values())
    return (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)


async def measure(redis: Any, n: int) -> dict[str, Any]:
    key_id = secrets.token_hex(6)
    await redis.hset(key_record_name(key_id), mapping={"status": "active"})
    principal = Principal(
        f"bench-{key_id}",
        ("analyst",),
        ("vision",),
        "standard",
        "api_key",
        key_id,
        key_record_name(key_id),
    )
    policy = PolicyDecision(True, 200, "ok", STANDARD, project="vision")
    limiter = Limiter(redis, timeout=1.0, config=LimiterConfig(), threat=ThreatWatcher(redis))
    for _ in range(200):  # warm: script loaded, connections open
        await limiter.check(principal, STANDARD, VIEW, policy)
        await redis.ping()
    ping, check = [], []
    before = await evalsha_calls(redis)
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await redis.ping()
        t1 = time.perf_counter_ns()
        result = await limiter.check(principal, STANDARD, VIEW, policy)
        t2 = time.perf_counter_ns()
        assert result.allowed
        ping.append(t1 - t0)
        check.append(t2 - t1)
    calls = await evalsha_calls(redis) - before
    # a denied key: the local over-limit cache answers in-process
    full = (Window("minute", 1, 60),)
    limiter.local = limiter.redis.local = type(limiter.local)(1000, 3600.0)  # type: ignore[attr-defined]
    await limiter.check(principal, full, VIEW, policy)
    await limiter.check(principal, full, VIEW, policy)
    local = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        result = await limiter.check(principal, full, VIEW, policy)
        local.append(time.perf_counter_ns() - t0)
        assert not result.allowed
    return {
        "check_standard_tier": summary(check),
        "redis_ping_floor": summary(ping),
        "added_over_ping_median_us": round(
            (statistics.median(check) - statistics.median(ping)) / 1000, 1
        ),
        "local_cache_429": summary(local),
        "evalsha_per_decision": round(max(0, calls) / n, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--no-cluster", action="store_true")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-lat-"))
    stack = Stack(stack_settings(run_dir), redis_aof=False)
    stack.up(["redis"])
    out: dict[str, Any] = {"n": args.n}
    ports: list[int] = []
    try:
        settings = stack.settings.model_copy(update={"redis_timeout": 1.0})

        async def single() -> dict[str, Any]:
            redis = redis_client(settings)
            try:
                return await measure(redis, args.n)
            finally:
                await redis.aclose()

        out["single_redis"] = asyncio.run(single())
        if not args.no_cluster:
            ports = cluster_ports(3)
            url = stack.cluster_up(ports)

            async def cluster() -> dict[str, Any]:
                redis = redis_client(
                    settings.model_copy(update={"redis_url": url, "redis_cluster": True})
                )
                try:
                    return await measure(redis, args.n)
                finally:
                    await redis.aclose()

            out["redis_cluster_3_masters"] = asyncio.run(cluster())
    finally:
        if ports:
            stack.cluster_down(ports)
        stack.down(["redis"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
