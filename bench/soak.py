"""`make soak`: mixed traffic through Envoy for a while, and what the service's resources do.

    .venv/bin/python -m bench.soak [--minutes 10] [--rate 120] [--out DIR]

Starts its own stack on free ports (Envoy, extauthz, OPA, Redis, MLServer), enrols the demo's
people, and drives a fixed mix from 4 client threads, paced to --rate requests/s in all:

    allowed    a bench-tier API key → digits            (200)
    DPoP       bob's JWT + a fresh proof from his managed device → diabetes   (200, or 429)
    denied     a made-up key (401) · alice → cancer, another project (403)
    limited    a trial key, 5 a minute (429 after the fifth)

Every 10 s it samples extauthz's RSS and open file descriptors, Redis's used memory, and the
window's p50/p99 latency of allowed requests. Writes DIR/soak.json, DIR/soak.png and DIR/soak.md
(DIR defaults to bench/results/<date>/). Loopback only; bounded in time and count. Not in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import redis as redis_sync

from bench.facts import _cpu_model
from bench.load import percentile
from extauthz.authn.apikeys import KeyStore
from extauthz.authn.dev_issuer import make_proof
from extauthz.demo import CANCER_ROW, DIABETES_ROW, DIGIT_ZERO, _enroll, infer_body
from extauthz.devstack import Stack
from extauthz.wiring import key_pepper, redis_client
from tests.conftest import stack_settings

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_EVERY = 10.0
WARMUP = 120.0  # seconds before the RSS reference point
# kind → share of requests
MIX = {"allowed": 0.70, "dpop": 0.08, "bad_key": 0.08, "forbidden": 0.07, "limited": 0.07}


@dataclass
class Window:
    statuses: Counter[str] = field(default_factory=Counter)
    allowed_us: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, status: int, us: int) -> None:
        with self.lock:
            self.statuses[f"{kind} {status}"] += 1
            if kind == "allowed" and status == 200:
                self.allowed_us.append(us)

    def take(self) -> tuple[Counter[str], list[int]]:
        with self.lock:
            out = self.statuses, self.allowed_us
            self.statuses, self.allowed_us = Counter(), []
        return out


class Traffic:
    """The request mix, built once; DPoP proofs and bob's token are made fresh as needed."""

    def __init__(self, stack: Stack, bench_key: str) -> None:
        self.stack = stack
        auth, self._dpop = asyncio.run(_enroll(stack))
        self._auth = auth
        self._bench = f"Bearer {bench_key}"
        self._minted = time.monotonic()
        self._lock = threading.Lock()
        self.bodies = {
            "digits": infer_body(DIGIT_ZERO),
            "cancer": infer_body(CANCER_ROW),
            "diabetes": infer_body(DIABETES_ROW),
        }

    def _bob_token(self) -> str:
        with self._lock:
            if time.monotonic() - self._minted > 120:  # access tokens are short-lived
                jkt = self._dpop["key"].thumbprint()  # type: ignore[attr-defined]
                self._dpop["token"] = self.stack.dev_issuer.mint(
                    "bob", ("clinician",), ("clinical",), dpop_jkt=jkt
                )
                self._minted = time.monotonic()
            return str(self._dpop["token"])

    def request(self, kind: str) -> tuple[str, bytes, dict[str, str]]:
        """(path, body, headers) for one request of `kind`."""
        if kind == "allowed":
            return "/v2/models/digits/infer", self.bodies["digits"], {"authorization": self._bench}
        if kind == "bad_key":
            return "/v2/models/digits/infer", self.bodies["digits"], {"x-api-key": "eak_0.nope"}
        if kind == "forbidden":
            headers = {"authorization": self._auth["alice key"]}
            return "/v2/models/cancer/infer", self.bodies["cancer"], headers
        if kind == "limited":
            headers = {"authorization": self._auth["trial-user key"]}
            return "/v2/models/digits/infer", self.bodies["digits"], headers
        path = "/v2/models/diabetes/infer"
        token = self._bob_token()
        proof = make_proof(self._dpop["key"], "POST", self.stack.envoy_url + path, token)  # type: ignore[arg-type]
        return path, self.bodies["diabetes"], {"authorization": f"DPoP {token}", "dpop": proof}


def _client(
    port: int, traffic: Traffic, window: Window, stop: threading.Event, rate: float
) -> None:
    rng = random.Random()
    kinds, weights = list(MIX), list(MIX.values())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    next_at = time.monotonic()
    while not stop.is_set():
        kind = rng.choices(kinds, weights)[0]
        path, body, headers = traffic.request(kind)
        started = time.perf_counter_ns()
        try:
            conn.request("POST", path, body, {**headers, "content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            status = 0
        window.add(kind, status, (time.perf_counter_ns() - started) // 1000)
        next_at += 1 / rate
        pause = next_at - time.monotonic()
        if pause > 0:
            stop.wait(pause)
        else:
            next_at = time.monotonic()  # behind: do not burst to catch up
    conn.close()


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def soak(minutes: float, rate: float, out_dir: Path, log: Any = print) -> dict[str, Any]:
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-soak-"))
    # failed-auth throttling and the automatic threat level would turn the mix into 429s
    settings = stack_settings(run_dir).model_copy(update={"auth_failure_limit": 10**9})
    stack = Stack(settings)
    samples: list[dict[str, Any]] = []
    stack.up()
    try:
        pid = stack._pid("extauthz")
        if pid is None:
            raise RuntimeError("extauthz has no pid")
        store_settings = settings.model_copy(update={"key_pepper_file": stack.key_pepper_file})

        async def bench_key() -> str:
            client = redis_client(store_settings)
            try:
                store = KeyStore(client, key_pepper(store_settings))
                _, key = await store.create(
                    "soak", ("analyst",), ("vision",), "bench", expires_in=86400
                )
                return key
            finally:
                await client.aclose()

        traffic = Traffic(stack, asyncio.run(bench_key()))
        rds = redis_sync.Redis.from_url(settings.redis_url)
        window, stop = Window(), threading.Event()
        threads = [
            threading.Thread(
                target=_client, args=(settings.envoy_port, traffic, window, stop, rate / 4)
            )
            for _ in range(4)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        try:
            while time.monotonic() - started < minutes * 60:
                time.sleep(SAMPLE_EVERY)
                statuses, allowed = window.take()
                allowed.sort()
                sample = {
                    "t": round(time.monotonic() - started, 1),
                    "rss_kib": _rss_kib(pid),
                    "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
                    "redis_used_bytes": int(rds.info("memory")["used_memory"]),
                    "requests": sum(statuses.values()),
                    "statuses": dict(statuses),
                    "allowed_p50_us": percentile(allowed, 50),
                    "allowed_p99_us": percentile(allowed, 99),
                }
                samples.append(sample)
                log(
                    f"t={sample['t']:>6}s rss={sample['rss_kib']} KiB fds={sample['fds']} "
                    f"redis={sample['redis_used_bytes']} req={sample['requests']} "
                    f"p99={sample['allowed_p99_us']} µs"
                )
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=15)
            rds.close()
    finally:
        stack.down()
        shutil.rmtree(run_dir, ignore_errors=True)
    result = summarise(samples, minutes, rate)
    write(result, out_dir)
    return result


def summarise(samples: list[dict[str, Any]], minutes: float, rate: float) -> dict[str, Any]:
    after = [s for s in samples if s["t"] >= WARMUP] or samples
    ref, last = after[0], after[-1]
    totals: Counter[str] = Counter()
    for s in samples:
        totals.update(s["statuses"])
    p99s = [s["allowed_p99_us"] for s in after if s["allowed_p99_us"] == s["allowed_p99_us"]]
    half = len(p99s) // 2
    return {
        "cpu_model": _cpu_model(),
        "minutes": minutes,
        "rate": rate,
        "warmup_s": WARMUP,
        "rss_growth_after_warmup": round(last["rss_kib"] / ref["rss_kib"] - 1, 4),
        "rss_kib_min_max_after_warmup": [
            min(s["rss_kib"] for s in after),
            max(s["rss_kib"] for s in after),
        ],
        "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)],
        "redis_used_bytes_first_last": [samples[0]["redis_used_bytes"], last["redis_used_bytes"]],
        "p99_first_half_median_us": median(p99s[:half]) if half else None,
        "p99_second_half_median_us": median(p99s[half:]) if p99s else None,
        "totals": dict(sorted(totals.items())),
        "samples": samples,
    }


def write(result: dict[str, Any], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["samples"]
    t = [x["t"] / 60 for x in s]
    fig, axes = plt.subplots(4, 1, figsize=(8, 9), sharex=True)
    series = [
        ("extauthz RSS (MiB)", [x["rss_kib"] / 1024 for x in s]),
        ("open fds", [x["fds"] for x in s]),
        ("Redis used memory (MiB)", [x["redis_used_bytes"] / 2**20 for x in s]),
        ("allowed p99 (ms)", [x["allowed_p99_us"] / 1000 for x in s]),
    ]
    for ax, (label, values) in zip(axes, series, strict=True):
        ax.plot(t, values, marker=".")
        ax.set_ylabel(label, fontsize=8)
        ax.axvline(result["warmup_s"] / 60, color="grey", linestyle=":")
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel("minutes (dotted: end of warm-up)")
    fig.suptitle(f"soak: {result['rate']} req/s mixed traffic through Envoy, {result['cpu_model']}")
    fig.tight_layout()
    fig.savefig(out_dir / "soak.png", dpi=90)
    plt.close(fig)
    lines = [
        "# Soak",
        "",
        f"{result['minutes']} min of mixed traffic at {result['rate']} req/s through Envoy "
        f"(`make soak`), {result['cpu_model']}. Sampled every {SAMPLE_EVERY:.0f} s.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| extauthz RSS growth after {result['warmup_s']:.0f} s warm-up | "
        f"{result['rss_growth_after_warmup']:+.1%} (min/max "
        f"{result['rss_kib_min_max_after_warmup'][0]}/{result['rss_kib_min_max_after_warmup'][1]}"
        " KiB) |",
        f"| open fds min/max | {result['fds_min_max'][0]}/{result['fds_min_max'][1]} |",
        f"| Redis used memory first/last | {result['redis_used_bytes_first_last'][0]}/"
        f"{result['redis_used_bytes_first_last'][1]} bytes |",
        f"| allowed p99, median of first/second half | {result['p99_first_half_median_us']}/"
        f"{result['p99_second_half_median_us']} µs |",
        "",
        "Requests by kind and status: "
        + ", ".join(f"{k}: {v}" for k, v in result["totals"].items()),
        "",
        "![soak](soak.png)",
        "",
    ]
    (out_dir / "soak.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=120.0, help="requests per second, in all")
    parser.add_argument("--out", type=Path, default=RESULTS / time.strftime("%Y-%m-%d"))
    args = parser.parse_args()
    result = soak(args.minutes, args.rate, args.out)
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=1))


if __name__ == "__main__":
    main()
