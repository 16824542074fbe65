"""What the TLS listener adds over plain HTTP, through real Envoy, extauthz and MLServer.

    .venv/bin/python -m bench.tls [--out DIR] [--rounds 5] [--requests 500]

One stack (Redis, OPA, MLServer, extauthz, the generated Envoy); the same request (digits, an
analyst's key on the `bench` tier) at concurrency 1 over HTTP/1.1 keep-alive, to the plain
listener and to the TLS listener (same connection manager, same routes: only the transport
differs; the handshake happens once per connection, so this is the per-request cost of TLS
records). Each round runs both, in alternating order; reported: each round's p50 difference
(TLS − plain), their median and spread (min, max), both p50s, and the processor. Writes
DIR/tls.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.facts import gather
from bench.load import h2load, percentile
from bench.procs import bench_settings
from bench.shaping import make_key
from extauthz.dev.devstack import Stack
from tests.e2e.payloads import DIGITS

PATH = "/v2/models/digits/infer"


def run(out_dir: Path, *, rounds: int = 5, requests: int = 500, log: Any = print) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-bench-tls-"))
    started = time.time()
    stack = Stack(bench_settings(run_dir, shape_port=0), redis_aof=False)
    s = stack.settings
    urls = {
        "plain": f"http://127.0.0.1:{s.envoy_port}{PATH}",
        "tls": f"https://127.0.0.1:{s.envoy_tls_port}{PATH}",
    }
    rows: list[dict[str, Any]] = []
    try:
        stack.up(["redis", "opa", "model", "extauthz", "envoy"])
        key = make_key(stack, "analyst", "vision")
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        body = json.dumps(DIGITS).encode()
        for name in urls:  # warm pools and caches
            h2load(urls[name], concurrency=1, requests=200, headers=headers, body=body)
        for r in range(rounds):
            p50 = {}
            for name in ("plain", "tls") if r % 2 == 0 else ("tls", "plain"):
                result = h2load(
                    urls[name], concurrency=1, requests=requests, headers=headers, body=body
                )
                if not result.ok:
                    raise RuntimeError(f"{name}: {result.statuses}")
                p50[name] = percentile(sorted(result.latencies_us), 50)
            rows.append({"round": r, **{f"{k}_p50_us": v for k, v in p50.items()}})
            rows[-1]["added_us"] = p50["tls"] - p50["plain"]
            log(
                f"round {r + 1}/{rounds}: plain {p50['plain']:.0f} µs, tls {p50['tls']:.0f} µs, "
                f"added {rows[-1]['added_us']:+.0f} µs"
            )
    finally:
        stack.down()
    added = [row["added_us"] for row in rows]
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "config": {"rounds": rounds, "requests_per_run": requests, "concurrency": 1},
        "processor": gather()["machine"]["CPU model"],
        "summary": {
            "added_p50_us_median": median(added),
            "added_p50_us_min": min(added),
            "added_p50_us_max": max(added),
            "plain_p50_us_median": median(row["plain_p50_us"] for row in rows),
            "tls_p50_us_median": median(row["tls_p50_us"] for row in rows),
        },
        "rounds": rows,
    }
    (out_dir / "tls.json").write_text(json.dumps(doc, indent=1))
    return doc


def table(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    return "\n".join(
        [
            "| c | plain p50 µs | TLS p50 µs | TLS added p50 µs, median of rounds | min | max |",
            "|---|---|---|---|---|---|",
            f"| 1 | {s['plain_p50_us_median']:.0f} | {s['tls_p50_us_median']:.0f} | "
            f"{s['added_p50_us_median']:+.0f} | {s['added_p50_us_min']:+.0f} | "
            f"{s['added_p50_us_max']:+.0f} |",
            f"\n{doc['config']['rounds']} rounds × {doc['config']['requests_per_run']} requests, "
            f"processor: {doc['processor']}",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "extauthz-tls")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    doc = run(args.out, rounds=args.rounds, requests=args.requests)
    print(table(doc))
    print(f"wrote {args.out / 'tls.json'}")


if __name__ == "__main__":
    main()
