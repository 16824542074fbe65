"""What the TLS listener adds over plain HTTP, through real Envoy (p50 at concurrency 1).

    .venv/bin/python -m bench.tls [--out DIR] [--rounds 15] [--requests 300]

One stack (Redis, OPA, MLServer, extauthz, the generated Envoy); the same request (digits, an
analyst's key on the `bench` tier) at concurrency 1 over HTTP/1.1 keep-alive, to a plain and a
TLS listener with the same connection manager (only the transport differs; the handshake happens
once per connection, so this is the per-request cost of TLS records). Two pairs:

    gateway   the stack's own listeners: the whole decision and the model (what a client sees)
    envoy     a second generated Envoy, plain and TLS listeners with the gateway's connection
              manager and TLS parameters, answering with a direct response: TLS alone, without
              the noise of extauthz and the model server

Each round runs every pair, both transports in alternating order; reported per pair: each
round's p50 difference (TLS − plain), their median and spread (min, max), both p50s, the
processor and the load average. Writes DIR/tls.json and prints a markdown table.
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
from extauthz.dev.devstack import Stack, envoy_component
from extauthz.dev.runner import free_ports
from extauthz.edge import filters, listeners, proto
from extauthz.edge.render import atomic_write, dumps
from extauthz.edge.routes import direct_response_routes
from tests.e2e.payloads import DIGITS

PATH = "/v2/models/digits/infer"


def direct_envoy(stack: Stack) -> tuple[Path, int, int, int]:
    """(config, plain port, TLS port, admin port) of an Envoy whose one route answers 200 itself."""
    plain, tls, admin = free_ports(3)
    routes = direct_response_routes("direct", '{"outputs":[]}')
    files = stack.envoy_files()
    limit = stack.settings.shape_max_body_bytes

    def manager(name: str) -> proto.listener.Filter:
        log = stack.logs / f"envoy-tls-bench-{name}.log"
        return listeners.connection_manager(
            name, [filters.router_filter()], log, route_config=routes
        )

    config = proto.bootstrap.Bootstrap(
        admin=proto.bootstrap.Admin(address=proto.socket_address(admin)),
        static_resources=proto.bootstrap.BootstrapStaticResources(
            listeners=[
                listeners.plain_listener("plain", plain, manager("plain"), limit),
                listeners.tls_listener(
                    "tls", tls, manager("tls"), limit, files, client_certificates=False
                ),
            ]
        ),
    )
    path = stack.run_dir / "envoy-tls-bench.json"
    atomic_write(path, dumps(proto.to_dict(config)))
    return path, plain, tls, admin


def run(
    out_dir: Path, *, rounds: int = 15, requests: int = 300, log: Any = print
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-bench-tls-"))
    started = time.time()
    stack = Stack(bench_settings(run_dir, shape_port=0), redis_aof=False)
    s = stack.settings
    urls = {
        "gateway": {
            "plain": f"http://127.0.0.1:{s.envoy_port}{PATH}",
            "tls": f"https://127.0.0.1:{s.envoy_tls_port}{PATH}",
        }
    }
    rows: list[dict[str, Any]] = []
    try:
        stack.up(["redis", "opa", "model", "extauthz", "envoy"])
        config, plain_port, tls_port, admin = direct_envoy(stack)
        stack.runner.start(envoy_component("envoy_tls_bench", config, admin))
        urls["envoy"] = {
            "plain": f"http://127.0.0.1:{plain_port}{PATH}",
            "tls": f"https://127.0.0.1:{tls_port}{PATH}",
        }
        key = make_key(stack, "analyst", "vision")
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        body = json.dumps(DIGITS).encode()
        for pair in urls.values():  # warm pools and caches
            for url in pair.values():
                h2load(url, concurrency=1, requests=200, headers=headers, body=body)
        for r in range(rounds):
            for pair, pair_urls in urls.items():
                p50 = {}
                for name in ("plain", "tls") if r % 2 == 0 else ("tls", "plain"):
                    result = h2load(
                        pair_urls[name],
                        concurrency=1,
                        requests=requests,
                        headers=headers,
                        body=body,
                    )
                    if not result.ok:
                        raise RuntimeError(f"{pair} {name}: {result.statuses}")
                    p50[name] = percentile(sorted(result.latencies_us), 50)
                row = {"round": r, "pair": pair, **{f"{k}_p50_us": v for k, v in p50.items()}}
                row["added_us"] = p50["tls"] - p50["plain"]
                rows.append(row)
                log(
                    f"round {r + 1}/{rounds} {pair:7}: plain {p50['plain']:.0f} µs, "
                    f"tls {p50['tls']:.0f} µs, added {row['added_us']:+.0f} µs"
                )
    finally:
        stack.runner.stop("envoy_tls_bench")
        stack.down()
    summary = {}
    for pair in urls:
        mine = [row for row in rows if row["pair"] == pair]
        added = [row["added_us"] for row in mine]
        summary[pair] = {
            "added_p50_us_median": median(added),
            "added_p50_us_min": min(added),
            "added_p50_us_max": max(added),
            "plain_p50_us_median": median(row["plain_p50_us"] for row in mine),
            "tls_p50_us_median": median(row["tls_p50_us"] for row in mine),
        }
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "config": {"rounds": rounds, "requests_per_run": requests, "concurrency": 1},
        "processor": gather()["machine"]["CPU model"],
        "load_average": Path("/proc/loadavg").read_text().split()[:3],
        "summary": summary,
        "rounds": rows,
    }
    (out_dir / "tls.json").write_text(json.dumps(doc, indent=1))
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = [
        "| path | c | plain p50 µs | TLS p50 µs | TLS added p50 µs, median of rounds | min | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair, s in doc["summary"].items():
        lines.append(
            f"| {pair} | 1 | {s['plain_p50_us_median']:.0f} | {s['tls_p50_us_median']:.0f} | "
            f"{s['added_p50_us_median']:+.0f} | {s['added_p50_us_min']:+.0f} | "
            f"{s['added_p50_us_max']:+.0f} |"
        )
    lines.append(
        f"\n{doc['config']['rounds']} rounds × {doc['config']['requests_per_run']} requests, "
        f"processor: {doc['processor']}, load average {' '.join(doc['load_average'])}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "extauthz-tls")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    doc = run(args.out, rounds=args.rounds, requests=args.requests)
    print(table(doc))
    print(f"wrote {args.out / 'tls.json'}")


if __name__ == "__main__":
    main()
