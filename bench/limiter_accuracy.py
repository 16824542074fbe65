"""How exact is the limiter? Replays a bursty trace through the real Lua script (real Redis,
injected clock) and compares with an exact sliding log computed offline.

    .venv/bin/python -m bench.limiter_accuracy [--seconds 1800] [--limit 100] [--window 60]
    .venv/bin/python -m bench.limiter_accuracy --compare     # several traces, old vs new

The limiter counts each window in `SUB_BUCKETS` sub-buckets, every one overlapping the trailing
window in full (extauthz/limits/limiter.py, "Algorithm"). `--compare` also simulates offline the
previous algorithm (two buckets, the previous one weighted by its overlap).

Reports, for the limiter:
- over-admission: admitted requests that made some trailing window hold more than `limit`
  admitted requests (what an exact limiter would never allow), as a share of admissions;
- under-admission: how many fewer requests it admitted than the exact sliding log did on the
  same trace (state diverges after the first difference, so this is end-to-end);
- Redis memory per tracked key (MEMORY USAGE of the counters one window keeps).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import secrets
import tempfile
from collections import deque
from pathlib import Path

from extauthz.dev.devstack import Stack
from extauthz.limits.limiter import Limiter, LimiterConfig
from extauthz.store.schema import counter_key, dimension_values
from extauthz.threat import ThreatWatcher
from extauthz.types import ModelRoute, PolicyDecision, Principal, RequestView, Window
from extauthz.wiring import redis_client
from tests.conftest import stack_settings


def bursty_trace(seconds: float, base_rps: float, seed: int) -> list[float]:
    """Poisson background plus bursts (a client probing, then backing off)."""
    rng = random.Random(seed)
    t, times = 0.0, []
    while t < seconds:
        burst = rng.random() < 0.02
        rate = base_rps * (rng.uniform(8, 20) if burst else 1.0)
        span = rng.uniform(2, 15) if burst else rng.uniform(5, 30)
        end = min(seconds, t + span)
        while True:
            t += rng.expovariate(rate)
            if t >= end:
                t = end
                break
            times.append(t)
    return times


def exact_sliding_log(times: list[float], limit: int, window: float) -> list[bool]:
    admitted: deque[float] = deque()
    out = []
    for t in times:
        while admitted and admitted[0] <= t - window:
            admitted.popleft()
        ok = len(admitted) < limit
        if ok:
            admitted.append(t)
        out.append(ok)
    return out


def over_admissions(admitted_times: list[float], limit: int, window: float) -> tuple[int, int]:
    """(admissions after which the trailing window (t - window, t] holds more than `limit`,
    the largest number any trailing window holds)."""
    over = peak = 0
    for i, t in enumerate(admitted_times):
        first = bisect.bisect_right(admitted_times, t - window)
        held = i - first + 1
        peak = max(peak, held)
        if held > limit:
            over += 1
    return over, peak


async def replay(
    stack: Stack, times: list[float], limit: int, window: int
) -> tuple[list[bool], int]:
    redis = redis_client(stack.settings.model_copy(update={"redis_timeout": 5.0}))
    clock_now = [0.0]
    # no local over-limit cache: every request goes through the script
    config = LimiterConfig(local_cache_size=0, strikes=0)
    limiter = Limiter(
        redis,
        timeout=5.0,
        clock=lambda: clock_now[0],
        config=config,
        threat=ThreatWatcher(redis),  # never polled: normal
    )
    principal = Principal(
        f"acc-{secrets.token_hex(4)}", (), (), "t", "api_key", secrets.token_hex(6)
    )
    quota = (Window("w", limit, window),)
    source = f"10.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}.7"
    view = RequestView(
        "acc", "POST", "/v2/models/m/infer", "h", source, {}, ModelRoute("m", "", "infer")
    )
    policy = PolicyDecision(True, 200, "ok", quota)
    epoch = 1_800_000_000.0
    decisions = []
    for t in times:
        clock_now[0] = epoch + t
        decisions.append((await limiter.check(principal, quota, view, policy)).allowed)
    key = counter_key(dimension_values(principal, ""), quota[0])
    memory = await redis.memory_usage(key) or 0
    await redis.aclose()
    return decisions, memory


def two_bucket_counter(times: list[float], limit: int, window: float) -> list[bool]:
    """The previous algorithm, offline: previous bucket weighted by its overlap + current."""
    counts: dict[int, int] = {}
    out = []
    for t in times:
        cur = int(t // window)
        weight = (window - (t % window)) / window
        ok = counts.get(cur - 1, 0) * weight + counts.get(cur, 0) + 1 <= limit
        if ok:
            counts[cur] = counts.get(cur, 0) + 1
        out.append(ok)
    return out


def score(times: list[float], decisions: list[bool], exact: list[bool], limit: int, window: int):
    admitted = [t for t, ok in zip(times, decisions, strict=True) if ok]
    over, peak = over_admissions(admitted, limit, window)
    n_exact, n = sum(exact), len(admitted)
    return {
        "admitted": n,
        "over_admission_rate": round(over / max(1, n), 5),
        "total_vs_exact": round((n - n_exact) / max(1, n_exact), 5),
        "peak_trailing_window_count": peak,
    }


def compare(seconds: float) -> list[dict[str, object]]:
    """Several traces and limits through the real script, against the exact log and the
    previous algorithm."""
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-acc-"))
    stack = Stack(stack_settings(run_dir), redis_aof=False)
    stack.up(["redis"])
    rows = []
    try:
        for limit, window in ((100, 60), (10, 1), (1000, 60)):
            for seed in (7, 11, 23):
                span = seconds if window >= 60 else min(seconds, 300)
                times = bursty_trace(span, base_rps=limit / window * 0.9, seed=seed)
                exact = exact_sliding_log(times, limit, window)
                new, memory = asyncio.run(replay(stack, times, limit, window))
                old = two_bucket_counter(times, limit, window)
                rows.append(
                    {
                        "limit": limit,
                        "window": window,
                        "seed": seed,
                        "requests": len(times),
                        "exact_admitted": sum(exact),
                        "sub_buckets": score(times, new, exact, limit, window),
                        "two_buckets_before": score(times, old, exact, limit, window),
                        "redis_bytes_per_key_window": memory,
                    }
                )
    finally:
        stack.down(["redis"])
    return rows


def run(seconds: float, limit: int, window: int, seed: int) -> dict[str, object]:
    times = bursty_trace(seconds, base_rps=limit / window * 0.9, seed=seed)
    exact = exact_sliding_log(times, limit, window)
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-acc-"))
    stack = Stack(stack_settings(run_dir), redis_aof=False)
    stack.up(["redis"])
    try:
        swc, memory = asyncio.run(replay(stack, times, limit, window))
    finally:
        stack.down(["redis"])
    admitted = [t for t, ok in zip(times, swc, strict=True) if ok]
    over, peak = over_admissions(admitted, limit, window)
    n_exact, n_swc = sum(exact), len(admitted)
    return {
        "trace": {
            "requests": len(times),
            "seconds": seconds,
            "limit": limit,
            "window": window,
            "seed": seed,
        },
        "exact_admitted": n_exact,
        "counter_admitted": n_swc,
        "over_admission_rate": round(over / max(1, n_swc), 5),
        "over_admitted_requests": over,
        "total_over_exact_rate": round(max(0, n_swc - n_exact) / max(1, n_exact), 5),
        "peak_trailing_window_count": peak,
        "under_admission_rate": round(max(0, n_exact - n_swc) / max(1, n_exact), 5),
        "redis_bytes_per_key_window": memory,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=1800)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--compare", action="store_true", help="several traces, old vs new")
    args = parser.parse_args()
    if args.compare:
        print(json.dumps(compare(args.seconds), indent=1))
        return
    print(json.dumps(run(args.seconds, args.limit, args.window, args.seed), indent=2))


if __name__ == "__main__":
    main()
