"""End-to-end: the same request through four guards, interleaved, under h2load.

    .venv/bin/python -m bench.e2e.run [--out DIR] [--rounds 3] [--concurrency 1 8 32] [--quick]

One bench Envoy (bench/envoy_bench.py) has a listener per path — A floor, B trivial Python
authz, C extauthz, D the Go peers — identical but for the guard, and each has the `model` route
(MLServer's digits model) and the `sink` route (an Envoy-served 200 upstream, no model
server). Every round
runs every (route, concurrency, path) once, rotating the path order per round, so all paths see
the same machine drift. Percentiles pool every request of every round; throughput is the median
of the rounds' h2load req/s. Writes DIR/e2e.json (and DIR/profile.txt when py-spy is present).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

import httpx
import redis as redis_sync

from bench.envoy_bench import RATELIMIT_DOMAIN, SINK_HEADER
from bench.load import Run, h2load, latency_cell, percentile
from bench.procs import BIN, DIGITS_PATH, BenchStack, Peers
from bench.profile import summarise_raw
from tests.e2e.payloads import DIGITS

PATH_NAMES = {
    "A": "Envoy, no ext_authz (floor)",
    "B": "Envoy → trivial Python grpc.aio authz",
    "C": "Envoy → extauthz (API key, full decision)",
    "D": "Envoy → Go OPA authz + ratelimit filter → envoyproxy/ratelimit",
    "E": "Envoy's own jwt_authn + rbac + local_ratelimit (JWT, no external hop)",
}
ROUTES = ("model", "sink")
DEFAULT_REQUESTS = {1: 300, 8: 1200, 32: 2400}
CDF_POINTS = [i / 2 for i in range(0, 201)]  # percentiles 0, 0.5, ..., 100


def body_and_headers(key: str, route: str) -> tuple[bytes, dict[str, str]]:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    if route == "sink":
        headers[SINK_HEADER] = "1"
    return json.dumps(DIGITS).encode(), headers


def request_for(bs: BenchStack, path: str, route: str) -> tuple[bytes, dict[str, str]]:
    """The same request on every path; E carries the JWT Envoy verifies instead of the key."""
    body, headers = body_and_headers(bs.key, route)
    if path == "E":
        headers["authorization"] = f"Bearer {bs.jwt}"
    return body, headers


def _tampered(authorization: str) -> str:
    """The credential with one character in its middle changed (a JWT: inside the signature)."""
    at = len(authorization) - 20
    return authorization[:at] + ("A" if authorization[at] != "A" else "B") + authorization[at + 1 :]


def smoke(bs: BenchStack) -> None:
    """Every path answers 200 for the key on both routes, and the guarded ones refuse a bad key."""
    with httpx.Client(timeout=10) as client:
        for path, port in bs.listener_ports.items():
            for route in ROUTES:
                body, headers = request_for(bs, path, route)
                resp = client.post(
                    f"http://127.0.0.1:{port}{DIGITS_PATH}", content=body, headers=headers
                )
                if resp.status_code != 200:
                    raise RuntimeError(f"path {path} {route}: {resp.status_code} {resp.text}")
            if path in ("C", "D", "E"):
                body, headers = request_for(bs, path, "sink")
                headers["authorization"] = _tampered(headers["authorization"])
                resp = client.post(
                    f"http://127.0.0.1:{port}{DIGITS_PATH}", content=body, headers=headers
                )
                if resp.status_code != 401:
                    raise RuntimeError(f"path {path} let a wrong key through: {resp.status_code}")


class Counters:
    """Redis commands and extauthz's own policy-cache counters, read around each run."""

    def __init__(self, bs: BenchStack) -> None:
        self._redis = redis_sync.Redis.from_url(bs.settings.redis_url)
        port = getattr(bs.settings, "metrics_port", 0)
        self._metrics = f"http://127.0.0.1:{port}/metrics" if port else ""

    def close(self) -> None:
        self._redis.close()

    def redis(self) -> dict[str, int]:
        stats = self._redis.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def policy_cache(self) -> dict[str, float]:
        """extauthz's decision-cache lookups by result, and its OPA queries (`opa_queries`)."""
        if not self._metrics:
            return {}
        try:
            with urllib.request.urlopen(self._metrics, timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for name, labels, value in _SAMPLE.findall(text):
            attrs = dict(_LABEL.findall(labels))
            if (
                name == "extauthz_policy_cache_total"
                and attrs.get("cache", "enforced") == "enforced"
            ):
                out[attrs.get("result", "?")] = out.get(attrs.get("result", "?"), 0) + float(value)
            elif name == "extauthz_opa_request_seconds_count":
                out["opa_queries"] = out.get("opa_queries", 0) + float(value)
        return out


_SAMPLE = re.compile(r"^(\w+)(?:\{([^}]*)\})? ([-+\d.eE]+|NaN)$", re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def script_commands() -> list[str]:
    """Commands extauthz's Lua scripts run inside Redis (Redis counts them like any other)."""
    lua = Path(__file__).resolve().parents[2] / "extauthz" / "limits" / "lua"
    found = set()
    for path in lua.glob("*.lua"):
        found |= set(re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", path.read_text()))
    return sorted(name.lower() for name in found)


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}


def guards_alone(bs: BenchStack, calls: int = 1000) -> dict[str, float]:
    """p50 µs of one gRPC call to each guard service directly (a Python client, c=1, the same
    CheckRequest Envoy sends): where each path's added latency goes, without Envoy."""
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.auth.v3 import external_auth_pb2_grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    from tests.unit.checkrequests import check_request

    body, headers = body_and_headers(bs.key, "model")
    check = check_request(headers=headers, body=body)
    targets: dict[str, tuple[int, Any]] = {
        "B trivial authz Check": (bs.trivial_port, None),
        "C extauthz Check": (bs.settings.port, None),
    }
    if bs.peers.authz:
        targets[f"D {bs.peers.authz} Check"] = (bs.peer_port, None)
    if bs.peers.ratelimit:
        entry = ratelimit_pb2.RateLimitDescriptor.Entry(key="key_id", value=bs.key_id)
        request = rls_pb2.RateLimitRequest(
            domain=RATELIMIT_DOMAIN,
            descriptors=[ratelimit_pb2.RateLimitDescriptor(entries=[entry])],
            hits_addend=1,
        )
        targets["D envoyproxy/ratelimit ShouldRateLimit"] = (bs.rl_grpc_port, request)
    out: dict[str, float] = {}
    for name, (port, rl_request) in targets.items():
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            if rl_request is None:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                call, arg = stub.Check, check
            else:
                call, arg = rls_pb2_grpc.RateLimitServiceStub(channel).ShouldRateLimit, rl_request
            for _ in range(100):
                call(arg, timeout=5)
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                call(arg, timeout=5)
                times.append(time.perf_counter() - t0)
        out[name] = round(median(times) * 1e6, 1)
    return out


def profile_extauthz(bs: BenchStack, out_dir: Path, seconds: float = 8.0) -> dict[str, Any]:
    """py-spy on the extauthz process while h2load drives path C (sink route, c=8)."""
    py_spy = shutil.which("py-spy") or str(Path(__file__).resolve().parents[2] / ".venv/bin/py-spy")
    pid = bs.pid("extauthz")
    if not Path(py_spy).is_file() or pid is None:
        return {"error": "py-spy not installed (pip install py-spy) or extauthz pid unknown"}
    raw = out_dir / "profile-extauthz.txt"
    spy = subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--function",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # py-spy attaches
    body, headers = body_and_headers(bs.key, "sink")
    url = f"http://127.0.0.1:{bs.listener_ports['C']}{DIGITS_PATH}"
    deadline = time.monotonic() + seconds - 1.5
    runs = 0
    while time.monotonic() < deadline and runs < 50:  # bounded in count and time
        h2load(url, concurrency=8, requests=800, headers=headers, body=body, timeout=30)
        runs += 1
    try:
        _, err = spy.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if spy.returncode != 0 or not raw.exists():
        return {"error": f"py-spy failed: {err.strip()[-300:]}"}
    return summarise_raw(raw.read_text())


def run(
    out_dir: Path,
    *,
    rounds: int = 5,
    concurrencies: tuple[int, ...] = (1, 8, 32),
    routes: tuple[str, ...] = ROUTES,
    requests: dict[int, int] | None = None,
    profile: bool = True,
    peers: Peers | None = None,
    log: Any = print,
) -> dict[str, Any]:
    requests = {**DEFAULT_REQUESTS, **(requests or {})}
    peers = peers or Peers.detect()
    out_dir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-bench-"))
    started = time.time()
    bs = BenchStack(run_dir, model="model" in routes, peers=peers)
    bs.up()
    try:
        log(f"stack up in {time.time() - started:.1f}s: listeners {bs.listener_ports}")
        smoke(bs)
        equivalence = _equivalence(bs) if peers.authz else (False, "no peer", {})
        paths = list(bs.listener_ports)
        counters = Counters(bs)
        for route in routes:  # warm every connection pool, cache and JIT-less path once
            for path in paths:
                body, headers = request_for(bs, path, route)
                url = f"http://127.0.0.1:{bs.listener_ports[path]}{DIGITS_PATH}"
                h2load(url, concurrency=8, requests=400, headers=headers, body=body)
        results: list[dict[str, Any]] = []
        samples: dict[tuple[str, int, str], list[int]] = {}
        per_path: dict[str, dict[str, Any]] = {
            p: {"requests": 0, "redis": {}, "policy_cache": {}} for p in paths
        }
        for r in range(rounds):
            for route in routes:
                for conc in concurrencies:
                    order = paths[r % len(paths) :] + paths[: r % len(paths)]
                    for path in order:
                        body, headers = request_for(bs, path, route)
                        url = f"http://127.0.0.1:{bs.listener_ports[path]}{DIGITS_PATH}"
                        before_r, before_c = counters.redis(), counters.policy_cache()
                        result: Run = h2load(
                            url,
                            concurrency=conc,
                            requests=requests[conc],
                            headers=headers,
                            body=body,
                        )
                        after_r, after_c = counters.redis(), counters.policy_cache()
                        if not result.ok:
                            raise RuntimeError(
                                f"{path} {route} c={conc}: statuses {result.statuses}"
                            )
                        acc = per_path[path]
                        acc["requests"] += result.requests
                        for k, v in _delta(after_r, before_r).items():
                            if k != "info":
                                acc["redis"][k] = acc["redis"].get(k, 0) + v
                        for k, v in _delta(after_c, before_c).items():
                            acc["policy_cache"][k] = acc["policy_cache"].get(k, 0) + v
                        samples.setdefault((route, conc, path), []).extend(result.latencies_us)
                        results.append(
                            {
                                "round": r,
                                "route": route,
                                "concurrency": conc,
                                "path": path,
                                "requests": result.requests,
                                "seconds": result.seconds,
                                "rps": result.rps,
                                "p50_us": percentile(sorted(result.latencies_us), 50),
                            }
                        )
                        log(
                            f"round {r + 1}/{rounds} {route:6} c={conc:<3} {path}: "
                            f"{result.rps:8.0f} req/s  p50 {results[-1]['p50_us'] / 1000:.2f} ms"
                        )
        counters.close()
        alone = guards_alone(bs)
        prof = profile_extauthz(bs, out_dir) if profile else {"error": "profiling off"}
    finally:
        bs.down()
        shutil.rmtree(run_dir, ignore_errors=True)
    summary: dict[str, Any] = {}
    cdf: dict[str, Any] = {}
    for (route, conc, path), values in samples.items():
        values.sort()
        rps = [
            x["rps"]
            for x in results
            if (x["route"], x["concurrency"], x["path"]) == (route, conc, path)
        ]
        summary.setdefault(route, {}).setdefault(str(conc), {})[path] = {
            **latency_cell(values, rps),
            "rps_rounds": rps,
        }
        cdf.setdefault(route, {}).setdefault(str(conc), {})[path] = [
            percentile(values, q) for q in CDF_POINTS
        ]
    per_decision = {
        p: {
            "requests": acc["requests"],
            "redis_commands": {
                k: round(v / acc["requests"], 3) for k, v in sorted(acc["redis"].items())
            },
            "policy_cache": {
                k: round(v / acc["requests"], 4) for k, v in sorted(acc["policy_cache"].items())
            },
        }
        for p, acc in per_path.items()
    }
    doc = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "config": {
            "rounds": rounds,
            "concurrencies": list(concurrencies),
            "routes": list(routes),
            "requests_per_run": {str(k): requests[k] for k in concurrencies},
            "request": f"POST {DIGITS_PATH} (digits model, {len(json.dumps(DIGITS))} B JSON body), "
            "Authorization: Bearer <bench-tier key>, HTTP/1.1 keep-alive",
        },
        "paths": {p: PATH_NAMES[p] for p in paths},
        "peers": {"authz": peers.authz, "ratelimit": peers.ratelimit, "notes": peers.notes},
        "equivalence": {"ok": equivalence[0], "detail": equivalence[1]},
        "opa_eval_us": equivalence[2],
        "summary": summary,
        "cdf_percentiles": CDF_POINTS,
        "cdf": cdf,
        "runs": results,
        "per_decision": per_decision,
        "guards_alone_p50_us": alone,
        "redis_script_commands": script_commands(),
        "profile": prof,
    }
    (out_dir / "e2e.json").write_text(json.dumps(doc, indent=1))
    return doc


def _equivalence(bs: BenchStack) -> tuple[bool, str, dict[str, float]]:
    from bench.peers.equivalence import check, eval_times
    from extauthz.types import Principal
    from tests.unit.checkrequests import check_request

    body, headers = body_and_headers(bs.key, "model")
    request = check_request(headers=headers, body=body)
    principal = Principal(
        subject="bench",
        roles=("analyst",),
        projects=("vision",),
        tier="bench",
        credential="api_key",
        credential_id=bs.key_id,
    )
    opa = str(BIN / "opa") if (BIN / "opa").is_file() else shutil.which("opa") or "opa"
    args = (
        opa,
        request,
        principal,
        bs.stack.policy_dir,
        bs.run_dir / "peer-data",
        bs.settings.max_body_bytes,
    )
    ok, detail = check(*args)
    return ok, detail, eval_times(*args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "extauthz-e2e")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--routes", nargs="+", default=list(ROUTES), choices=ROUTES)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    doc = run(
        args.out,
        rounds=args.rounds,
        concurrencies=tuple(args.concurrency),
        routes=tuple(args.routes),
        profile=not args.no_profile,
    )
    print(json.dumps(doc["summary"], indent=1))
    print(f"wrote {args.out / 'e2e.json'}")


if __name__ == "__main__":
    main()
