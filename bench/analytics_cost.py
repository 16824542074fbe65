"""What the query stream and the analytics worker cost, against real Redis and OPA:

- the decision path: `QueryEmitter.emit` (one append), ns per call;
- the service process off the path: `QueryEmitter.flush` CPU per event (pipelined XADD), in
  batches as a 50 ms flush interval at `--rate` decisions/s would make them;
- the worker's memory per tenant state (digits: 64 features, history and window full);
- the worker: detector CPU per feature row (digits, its registered held-out profile) and the
  events per second one worker reads, scores and acknowledges (noise and replayed rows).

    .venv/bin/python -m bench.analytics_cost [--events 5000] [--rate 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from extauthz.analytics.actions import ActionLog, ActionStore
from extauthz.analytics.events import QueryEmitter
from extauthz.analytics.worker import Worker
from extauthz.dev.devstack import Stack
from extauthz.types import Decision, ModelRoute, Principal, Reason, RequestView, Status
from extauthz.wiring import redis_client
from tests.conftest import stack_settings


def _view(row: list[float], ip: str) -> RequestView:
    body = json.dumps(
        {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP64", "data": row}]}
    ).encode()
    route = ModelRoute("digits", "", "infer")
    return RequestView("r", "POST", "/v2/models/digits/infer", "h", ip, {}, route, body)


async def measure(stack: Stack, events: int, rate: int) -> dict[str, float]:
    settings = stack.settings.model_copy(update={"redis_timeout": 2.0})
    redis = redis_client(settings)
    rng = random.Random(0)
    replay = json.loads((stack.heldout_dir / "digits.json").read_text())["replay"]["rows"]
    views = []
    for i in range(events):
        row = replay[i % len(replay)] if i % 2 else [float(rng.randint(0, 16)) for _ in range(64)]
        views.append(_view(row, f"10.{i % 7}.0.1"))
    decisions = [
        Decision(
            Status.OK,
            Reason.OK,
            "d",
            Principal(f"s{i % 50}", ("analyst",), ("vision",), "standard", "api_key", f"k{i}"),
        )
        for i in range(50)
    ]
    emitter = QueryEmitter(redis, settings.analytics_shards, settings.analytics_stream_maxlen)
    emitter._size = emitter._max_bytes = 1 << 62  # noqa: SLF001 - measure, never drop
    batch = max(1, rate // 20)  # what queues in 50 ms
    emit_ns, flush_cpu = [], 0.0
    for start in range(0, events, batch):
        for i in range(start, min(events, start + batch)):
            t = time.perf_counter_ns()
            emitter.emit(views[i], decisions[i % 50])
            emit_ns.append(time.perf_counter_ns() - t)
        t = time.process_time()
        await emitter.flush()
        flush_cpu += time.process_time() - t
    with tempfile.TemporaryDirectory() as tmp:
        actions = ActionStore(redis, ActionLog(str(Path(tmp) / "actions.log")))
        worker = Worker(redis, settings.opa_url, actions, shards=settings.analytics_shards)
        await worker.refresh()
        await worker.claim()
        t, cpu = time.perf_counter(), time.process_time()
        done = 0
        while done < events:
            got = await worker.read_once()
            if not got:
                break
            done += got
        wall, cpu = time.perf_counter() - t, time.process_time() - cpu
        await worker.release_all()
        await worker.close()
    from extauthz.metrics import ANALYTICS_SECONDS

    count = sum(
        m.value for m in ANALYTICS_SECONDS.collect()[0].samples if m.name.endswith("_count")
    )
    total = sum(m.value for m in ANALYTICS_SECONDS.collect()[0].samples if m.name.endswith("_sum"))
    await redis.aclose()
    return {
        "tenant_state_kib": tenant_state_kib(stack),
        "emit_ns_median": statistics.median(emit_ns),
        "flush_cpu_us_per_event": flush_cpu / events * 1e6,
        "worker_events": done,
        "worker_events_per_s": done / wall,
        "worker_cpu_us_per_event": cpu / max(1, done) * 1e6,
        "detector_us_per_row": total / max(1, count) * 1e6,
    }


def tenant_state_kib(stack: Stack, tenants: int = 1000) -> float:
    """Memory per tenant state (digits, 100 random rows each: history and window full)."""
    import tracemalloc

    from extauthz.analytics.detectors import Tenants, score_row
    from extauthz.analytics.profile import build_profile

    doc = json.loads((stack.heldout_dir / "digits.json").read_text())["reference"]
    profile = build_profile("digits", doc["rows"], doc["labels"])
    rng = random.Random(0)
    rows = [tuple(float(rng.randint(0, 16)) for _ in range(64)) for _ in range(100)]
    tracemalloc.start()
    states = Tenants(tenants)
    for i in range(tenants):
        state = states.get(f"s{i}", "digits")
        for row in rows:
            score_row(profile, state, row, True)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return used / tenants / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--rate", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(stack_settings(Path(tmp)), redis_aof=False)
        stack.up(["redis", "opa"])
        try:
            stack.register_references()
            result = asyncio.run(measure(stack, args.events, args.rate))
        finally:
            stack.down()
    for k, v in result.items():
        print(f"{k:28s} {v:12.1f}")


if __name__ == "__main__":
    main()
