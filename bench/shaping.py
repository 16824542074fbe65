"""What response shaping costs, through real Envoy, extauthz and MLServer.

    .venv/bin/python -m bench.shaping [--out DIR] [--rounds 3] [--concurrency 1 8] [--requests 600]

Three Envoys rendered from envoy/envoy.yaml.in in front of one stack (Redis, OPA, MLServer,
extauthz), listeners otherwise identical:

    base      the template without its `#>shaping` blocks: no ext_proc, no custom_response, no
              route re-selection after ext_authz (main's config before issue 13)
    inproc    the template: ext_proc served by the extauthz process (EXTAUTHZ_SHAPE_PORT=0)
    sidecar   the template, ext_proc served by `extauthz serve --shaping-only` beside it

Two requests, each on every Envoy, interleaved and rotated per round:

    unshaped  digits, an analyst's key (no plan: the answer never reaches ext_proc)
    shaped    cancer with predict_proba, a clinician's key (round 2, top-1: ext_proc rewrites)

Reported per (request, concurrency, envoy): p50/p90/p99 of every request of every round, the
median of the rounds' req/s, and each one's cost against `base` for the same request. Writes
DIR/shaping.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

from bench.load import h2load, percentile
from bench.procs import bench_settings
from extauthz.dev.devstack import ROOT, Stack, envoy_component
from extauthz.dev.runner import Component, free_ports, grpc_health_ok
from tests.e2e.payloads import CANCER, DIGITS, infer

ENVOYS = ("base", "inproc", "sidecar")
REQUESTS = {
    "unshaped": ("/v2/models/digits/infer", DIGITS, ("analyst", "vision")),
    "shaped": (
        "/v2/models/cancer/infer",
        infer(CANCER["inputs"][0]["data"], outputs=["predict_proba"]),
        ("clinician", "clinical"),
    ),
}
_MARKED = re.compile(r"^[ \t]*#>shaping.*?^[ \t]*#<shaping[^\n]*\n", re.M | re.S)


def without_shaping(template: str) -> str:
    """The template with every `#>shaping ... #<shaping` block cut out."""
    return _MARKED.sub("", template)


def render(stack: Stack, template: str, name: str, shape_port: int) -> tuple[Component, int]:
    """An Envoy from `template` on its own ports, in front of `stack`'s services."""
    s = stack.settings
    port, admin, mtls = free_ports(3)
    text = string.Template(template).substitute(
        envoy_port=port,
        envoy_admin_port=admin,
        extauthz_port=s.port,
        model_port=s.model_port,
        max_body_bytes=s.max_body_bytes,
        access_log=stack.logs / f"envoy-{name}.log",
        extra_listeners="",
        envoy_mtls_port=mtls,
        tls_cert=stack.dev_ca.server_cert,
        tls_key=stack.dev_ca.server_key,
        client_ca=stack.client_ca_file,
        shape_port=shape_port,
        shape_max_body_bytes=s.shape_max_body_bytes,
    )
    path = stack.run_dir / f"envoy-{name}.yaml"
    path.write_text(text)
    return envoy_component(f"envoy_{name}", path, admin), port


def make_key(stack: Stack, roles: str, projects: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "extauthz", "keys", "create", "--subject", f"bench-{roles}"]
        + ["--roles", roles, "--projects", projects, "--tier", "bench", "--json"],
        env={**os.environ, **stack.service_env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)["key"]


def run(
    out_dir: Path,
    *,
    rounds: int = 3,
    concurrencies: tuple[int, ...] = (1, 8),
    requests: int = 600,
    log: Any = print,
) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-bench-shaping-"))
    started = time.time()
    stack = Stack(bench_settings(run_dir, shape_port=0), redis_aof=False)  # in-process processor
    sidecar_port = free_ports(1)[0]
    sidecar = Component(
        "shaping_sidecar",
        [sys.executable, "-m", "extauthz", "serve", "--shaping-only"],
        lambda: grpc_health_ok(sidecar_port),
        env={**stack.service_env(), "EXTAUTHZ_SHAPE_PORT": str(sidecar_port)},
    )
    template = (ROOT / "envoy/envoy.yaml.in").read_text()
    started_names: list[str] = []
    samples: dict[tuple[str, int, str], list[int]] = {}
    runs: list[dict[str, Any]] = []
    try:
        stack.up(["redis", "opa", "model", "extauthz"])
        stack.logs.mkdir(parents=True, exist_ok=True)
        stack.runner.start(sidecar)
        started_names.append(sidecar.name)
        ports = {}
        for name, text, shape_port in (
            ("base", without_shaping(template), stack.settings.port),
            ("inproc", template, stack.settings.port),
            ("sidecar", template, sidecar_port),
        ):
            component, ports[name] = render(stack, text, name, shape_port)
            stack.runner.start(component)
            started_names.append(component.name)
        keys = {kind: make_key(stack, *REQUESTS[kind][2]) for kind in REQUESTS}
        log(f"stack up in {time.time() - started:.1f}s: envoys {ports}")

        def load(kind: str, envoy: str, conc: int, n: int) -> Any:
            path, body, _ = REQUESTS[kind]
            headers = {"authorization": f"Bearer {keys[kind]}", "content-type": "application/json"}
            url = f"http://127.0.0.1:{ports[envoy]}{path}"
            return h2load(
                url, concurrency=conc, requests=n, headers=headers, body=json.dumps(body).encode()
            )

        for kind in REQUESTS:  # warm every pool and cache once
            for envoy in ENVOYS:
                load(kind, envoy, 8, 300)
        for r in range(rounds):
            for kind in REQUESTS:
                for conc in concurrencies:
                    order = ENVOYS[r % 3 :] + ENVOYS[: r % 3]
                    for envoy in order:
                        result = load(kind, envoy, conc, requests)
                        if not result.ok:
                            raise RuntimeError(f"{kind} {envoy} c={conc}: {result.statuses}")
                        samples.setdefault((kind, conc, envoy), []).extend(result.latencies_us)
                        p50 = percentile(sorted(result.latencies_us), 50)
                        runs.append(
                            {"round": r, "request": kind, "concurrency": conc, "envoy": envoy}
                            | {"rps": result.rps, "p50_us": p50}
                        )
                        log(
                            f"round {r + 1}/{rounds} {kind:8} c={conc:<2} {envoy:7}: "
                            f"{result.rps:7.0f} req/s  p50 {p50 / 1000:.2f} ms"
                        )
    finally:
        for name in reversed(started_names):
            stack.runner.stop(name)
        stack.down()
    summary: dict[str, Any] = {}
    for (kind, conc, envoy), values in sorted(samples.items()):
        values.sort()
        rps = [
            x["rps"]
            for x in runs
            if (x["request"], x["concurrency"], x["envoy"]) == (kind, conc, envoy)
        ]
        summary.setdefault(kind, {}).setdefault(str(conc), {})[envoy] = {
            "n": len(values),
            "p50_us": percentile(values, 50),
            "p90_us": percentile(values, 90),
            "p99_us": percentile(values, 99),
            "rps_median": median(rps),
        }
    by_round = {(x["round"], x["request"], x["concurrency"], x["envoy"]): x for x in runs}
    for kind, by_conc in summary.items():
        for conc, cells in by_conc.items():
            base = cells["base"]
            for envoy, cell in cells.items():
                cell["p50_added_us"] = cell["p50_us"] - base["p50_us"]
                cell["p50_cost_pct"] = 100 * (cell["p50_us"] / base["p50_us"] - 1)
                cell["rps_cost_pct"] = 100 * (1 - cell["rps_median"] / base["rps_median"])
                # the load of a shared machine drifts between runs: the median over rounds of
                # each round's ratio to `base` (runs of one round are seconds apart) is steadier
                pairs = [
                    (by_round[(r, kind, int(conc), envoy)], by_round[(r, kind, int(conc), "base")])
                    for r in range(rounds)
                ]
                cell["p50_ratio_median_pct"] = 100 * (
                    median(a["p50_us"] / b["p50_us"] for a, b in pairs) - 1
                )
                cell["rps_ratio_median_pct"] = 100 * (
                    1 - median(a["rps"] / b["rps"] for a, b in pairs)
                )
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "config": {
            "rounds": rounds,
            "concurrencies": list(concurrencies),
            "requests_per_run": requests,
        },
        "envoys": {
            "base": "template without the #>shaping blocks (no ext_proc, no custom_response)",
            "inproc": "template; ext_proc on the extauthz process",
            "sidecar": "template; ext_proc on `extauthz serve --shaping-only`",
        },
        "summary": summary,
        "runs": runs,
    }
    (out_dir / "shaping.json").write_text(json.dumps(doc, indent=1))
    return doc


def table(doc: dict[str, Any]) -> str:
    lines = [
        "| request | c | envoy | p50 ms | p99 ms | req/s | p50 added | p50 cost | req/s cost "
        "| p50 cost, median of rounds | req/s cost, median of rounds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, by_conc in doc["summary"].items():
        for conc, cells in by_conc.items():
            for envoy in ENVOYS:
                c = cells[envoy]
                lines.append(
                    f"| {kind} | {conc} | {envoy} | {c['p50_us'] / 1000:.2f} | "
                    f"{c['p99_us'] / 1000:.2f} | {c['rps_median']:.0f} | "
                    f"{c['p50_added_us']:+.0f} µs | {c['p50_cost_pct']:+.1f} % | "
                    f"{c['rps_cost_pct']:+.1f} % | {c['p50_ratio_median_pct']:+.1f} % | "
                    f"{c['rps_ratio_median_pct']:+.1f} % |"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=Path(tempfile.gettempdir()) / "extauthz-shaping"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args()
    doc = run(
        args.out,
        rounds=args.rounds,
        concurrencies=tuple(args.concurrency),
        requests=args.requests,
    )
    print(table(doc))
    print(f"wrote {args.out / 'shaping.json'}")


if __name__ == "__main__":
    main()
