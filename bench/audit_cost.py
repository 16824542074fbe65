"""What the audit trail costs: the decision path with it on and off, and `audit verify`'s speed.

    .venv/bin/python -m bench.audit_cost [--rounds 30] [--batch 300] [--records 200000]

1. Decision path: two services built by `wiring.build_service` against one real Redis and OPA
   (started for the run), identical but for EXTAUTHZ_AUDIT_ENABLED; rounds of `batch`
   sequential `CheckHandler.check` calls alternate between them (A B B A ...) so the machine's
   drift hits both alike. The audit's work runs on the decision log's writer thread (chain,
   spool) and in a shipper process, so what the request path pays is GIL and CPU contention,
   which these timings include (a round is long against the 50 ms flush interval). Reported:
   median of the per-round mean per decision, and the median of paired rounds' ratios.
2. The writer thread's own CPU per record (chain, spool write, fsync per batch), thread time;
   and, in part 1, the writer's and the shipper process's CPU per decision.
3. `verify`: a chain of realistic decision records (checkpoint every 1,000), verified in memory
   (the same code `extauthz audit verify --file` runs), records per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

from bench.procs import bench_settings
from extauthz.audit.chain import Chain, key_id, load_signing_key
from extauthz.audit.spool import Spool
from extauthz.audit.verify import verify_lines
from extauthz.audit.writer import AuditWriter
from extauthz.dev.devstack import ROOT, Stack
from extauthz.settings import Settings
from extauthz.wiring import build_service
from tests.e2e.payloads import DIGITS
from tests.unit.checkrequests import check_request

RECORD = {
    "ts": 1764571234.123456,
    "decision_id": "8f14e45fceea167a5a36dedd4bea2543",
    "request_id": "3f1c8a52-6a0e-4d7e-9a44-2f1b9f0f6b2e",
    "status": 200,
    "reason": "ok",
    "policy_reason": "allowed",
    "opa_decision_id": "0f3c1d2e-5b6a-4c7d-8e9f-a0b1c2d3e4f5",
    "policy_source": "cache",
    "policy_revision": "9c1185a5c5e9fc54612808977ee8f548b2258d31",
    "subject": "bench",
    "credential": "api_key",
    "credential_id": "eak_f62be1ef9d39",
    "device_trust": None,
    "device": None,
    "method": "POST",
    "path": "/v2/models/digits/infer",
    "model": "digits",
    "action": "infer",
    "source_ip": "127.0.0.1",
    "retry_after": None,
    "detail": None,
    "duration_us": 912,
    "worker": 12345,
}


def _key(stack: Stack) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "extauthz", "keys", "create", "--subject", "bench",
         "--roles", "analyst", "--projects", "vision", "--tier", "bench", "--json"],
        env={**os.environ, **stack.service_env()}, cwd=ROOT, capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    return json.loads(out.stdout)["key"]


def _request(key: str):  # type: ignore[no-untyped-def]
    return check_request(
        headers={
            "authorization": f"Bearer {key}",
            "content-type": "application/json",
            "x-request-id": str(uuid.uuid4()),
        },
        body=json.dumps(DIGITS).encode(),
    )


def decision_path(
    run_dir: Path, rounds: int, batch: int, sink: str
) -> dict[str, tuple[float, float, float]]:
    base = bench_settings(run_dir, decision_log=os.devnull, audit_sink=sink)
    stack = Stack(base, redis_aof=False)
    stack.up(["redis", "opa"])
    loop = asyncio.new_event_loop()
    try:
        key = _key(stack)
        services = {
            flag: build_service(Settings(**{**base.model_dump(), "audit_enabled": flag}))
            for flag in (False, True)
        }
        for service in services.values():
            loop.run_until_complete(service.start())
        request = _request(key)

        async def run(handler) -> float:  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            for _ in range(batch):
                await handler.check(request)
            return (time.perf_counter() - started) / batch

        for service in services.values():  # warm: key and decision caches
            loop.run_until_complete(run(service.handler))
        shipper_before = _process_cpu(services[True].decision_log._audit._process.pid)  # type: ignore[union-attr]
        wall: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        main_cpu: dict[bool, list[float]] = {False: [], True: []}
        for i in range(rounds):
            order = (False, True) if i % 2 == 0 else (True, False)
            for flag in order:
                process, thread = time.process_time(), time.thread_time()
                wall[flag].append(loop.run_until_complete(run(services[flag].handler)))
                main_cpu[flag].append((time.thread_time() - thread) / batch)
                time.sleep(0.06)  # the writer's last batch of this round lands in this round
                cpu[flag].append((time.process_time() - process) / batch)
        audit = services[True].decision_log._audit  # its own CPU counters
        shipper = audit._process.pid  # type: ignore[union-attr]
        audit_cpu = {
            "writer thread (in the service)": audit.writer_cpu,  # type: ignore[union-attr]
            "shipper process (beside it)": _process_cpu(shipper) - shipper_before,
        }
        for service in services.values():
            loop.run_until_complete(service.close())
    finally:
        loop.close()
        stack.down()
    result = {}
    for name, series in (("wall", wall), ("cpu", cpu), ("main_cpu", main_cpu)):
        off, on = (statistics.median(series[f]) for f in (False, True))
        # each round against its neighbour of the other kind: drift of the machine cancels
        paired = statistics.median(a / b for a, b in zip(series[True], series[False], strict=True))
        result[name] = (off * 1e6, on * 1e6, (paired - 1) * 100)
    decisions = rounds * batch + batch  # per service, with the warm-up
    result["threads"] = tuple(  # type: ignore[assignment]
        (name, seconds / decisions * 1e6) for name, seconds in audit_cpu.items()
    )
    return result


def _process_cpu(pid: int) -> float:
    """CPU seconds of another process (the kernel's 10 ms ticks: long runs only)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def writer_cpu(run_dir: Path, records: int) -> float:
    """µs of the writer thread's CPU per record (batches of 50, as ~1,000 decisions/s give)."""
    key = load_signing_key("", run_dir / "bench-audit-key")
    writer = AuditWriter(Spool(run_dir / "bench-spool", "bench-w0", 16 << 20), key, None)
    writer.open()
    line = orjson.dumps(RECORD) + b"\n"
    started = time.thread_time()
    for _ in range(records // 50):
        writer.write([line] * 50)
    spent = time.thread_time() - started
    writer.close()
    return spent / records * 1e6


def verify_rate(records: int, write: str = "") -> tuple[float, int]:
    """In-memory verify of `records` chained records; with `write`, also saved there (and the
    public key at <write>.pub) for `extauthz audit verify --file`."""
    key = load_signing_key(os.urandom(32).hex(), Path("/nonexistent"))
    kid = key_id(key.public_key())
    chain = Chain("bench-w0-00000000")
    body = orjson.dumps(RECORD)
    lines = []
    for i in range(records):
        lines.append(chain.link(body))
        if i % 1000 == 999:
            lines.append(chain.checkpoint(key, kid))
    lines.append(chain.checkpoint(key, kid))
    if write:
        Path(write).write_bytes(b"\n".join(lines) + b"\n")
        Path(write + ".pub").write_text(key.public_key().public_bytes_raw().hex() + "\n")
    started = time.perf_counter()
    report = verify_lines(lines, {kid: key.public_key()})
    seconds = time.perf_counter() - started
    assert report.ok, report.problem
    return report.records / seconds, len(lines[0])


def store_verify_rate(run_dir: Path, records: int) -> float:
    """verify_store over a real Redis holding `records` records (shipped as the service does)."""
    import redis as syncredis

    from extauthz.audit.sink import RedisStreamSink
    from extauthz.audit.verify import verify_store

    settings = bench_settings(run_dir / "store")
    stack = Stack(settings, redis_aof=False)
    stack.up(["redis"])
    try:
        client = syncredis.Redis.from_url(settings.redis_url)
        sink = RedisStreamSink(client)
        key = load_signing_key(os.urandom(32).hex(), Path("/nonexistent"))
        kid = key_id(key.public_key())
        chain = Chain("bench-w0-00000000")
        body = orjson.dumps(RECORD)
        batch: list[bytes] = []
        first = 1
        for i in range(records):
            batch.append(chain.link(body) + b"\n")
            if i % 1000 == 999 or i == records - 1:
                batch.append(chain.checkpoint(key, kid) + b"\n")
                sink.append(chain.writer, first, b"".join(batch))
                first, batch = chain.seq + 1, []
        sink.register(chain.writer, {})
        started = time.perf_counter()
        report = verify_store(client, {kid: key.public_key()})
        seconds = time.perf_counter() - started
        assert report.ok, report.problem
        client.close()
        return report.records / seconds
    finally:
        stack.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--sink", default="redis", help="EXTAUTHZ_AUDIT_SINK of the run")
    parser.add_argument("--write", default="", help="also save the verified chain here")
    parser.add_argument("--store", type=int, default=0, help="also verify N records in Redis")
    parser.add_argument("--skip-path", action="store_true", help="only the offline parts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as tmp:
        run_dir = Path(tmp)
        rate, size = verify_rate(args.records, args.write)
        print(f"verify: {rate:,.0f} records/s ({args.records:,} records of {size} bytes)")
        print(f"writer thread: {writer_cpu(run_dir, 50_000):.1f} µs CPU per record")
        if args.store:
            rate = store_verify_rate(run_dir, args.store)
            print(f"verify (central store, Redis): {rate:,.0f} records/s ({args.store:,} records)")
        if not args.skip_path:
            path = decision_path(run_dir, args.rounds, args.batch, args.sink)
            print(f"decision path, median of {args.rounds} rounds x {args.batch} (off -> on):")
            for name, label in (
                ("wall", "wall time per decision"),
                ("cpu", "process CPU per decision (every thread)"),
                ("main_cpu", "event-loop thread CPU per decision"),
            ):
                off, on, paired = path[name]
                print(f"  {label}: {off:.0f} -> {on:.0f} µs (paired rounds {paired:+.1f} %)")
            print("  the audit's own CPU, per decision:")
            for thread, us in path["threads"]:  # type: ignore[union-attr]
                print(f"    {thread}: {us:.1f} µs")


if __name__ == "__main__":
    main()
