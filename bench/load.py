"""Load from h2load (Debian's nghttp2-client): one bounded run, its per-request latencies.

h2load's --log-file writes one line per request: start time (µs since the epoch), HTTP status,
µs until the end of the response. Those give exact percentiles and CDFs; its summary gives
throughput. Every run is bounded by a request count and a wall-clock timeout, loopback only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from statistics import median


class LoadError(RuntimeError):
    pass


@dataclass
class Run:
    url: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    latencies_us: list[int]
    statuses: dict[int, int]

    @property
    def ok(self) -> bool:
        return set(self.statuses) == {200} and len(self.latencies_us) == self.requests


def h2load_path() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise LoadError("h2load not found: run scripts/install_bench_tools.sh (nghttp2-client)")
    return found


def h2load(
    url: str,
    *,
    concurrency: int,
    requests: int,
    headers: dict[str, str],
    body: bytes,
    timeout: float = 120.0,
) -> Run:
    """POST `body` to `url` `requests` times over `concurrency` HTTP/1.1 keep-alive connections
    (an https:// URL: over TLS, ALPN http/1.1; h2load does not verify the certificate)."""
    if not url.startswith(("http://127.0.0.1:", "https://127.0.0.1:")):
        raise LoadError(f"loopback only: {url}")
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        log_file = Path(tmp) / "log.tsv"
        argv = [
            h2load_path(),
            "--h1",
            f"--requests={requests}",
            f"--clients={concurrency}",
            "--max-concurrent-streams=1",
            "--threads=1",
            f"--data={body_file}",
            f"--log-file={log_file}",
        ]
        for name, value in headers.items():
            argv.append(f"--header={name}: {value}")
        argv.append(url)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"h2load exceeded {timeout}s on {url}") from exc
        if out.returncode != 0:
            raise LoadError(f"h2load failed ({out.returncode}): {out.stderr or out.stdout}")
        latencies: list[int] = []
        statuses: dict[int, int] = {}
        for line in log_file.read_text().splitlines():
            _start, status, elapsed = line.split("\t")[:3]
            statuses[int(status)] = statuses.get(int(status), 0) + 1
            latencies.append(int(elapsed))
    finished = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", out.stdout)
    if finished is None:
        raise LoadError(f"unexpected h2load output:\n{out.stdout}")
    seconds = float(finished[1]) / (1000 if finished[2] == "ms" else 1)
    return Run(url, concurrency, requests, seconds, float(finished[3]), latencies, statuses)


def latency_cell(values: list[int] | list[float], rps: list[float]) -> dict[str, float]:
    """One cell of a benchmark summary: a run's latencies (µs) pooled over rounds, sorted here,
    and each round's throughput."""
    values = sorted(values)
    return {
        "n": len(values),
        "p50_us": percentile(values, 50),
        "p90_us": percentile(values, 90),
        "p99_us": percentile(values, 99),
        "max_us": float(values[-1]) if values else float("nan"),
        "rps_median": median(rps) if rps else float("nan"),
    }


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return float(sorted_values[rank - 1])
