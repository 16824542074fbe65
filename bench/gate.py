"""The CI benchmark gate: a short interleaved run, ratios against bench/baseline.json.

    .venv/bin/python -m bench.gate                     # measure, compare, exit 1 on a regression
    .venv/bin/python -m bench.gate --update-baseline   # measure 3 times, write the baseline
    .venv/bin/python -m bench.gate --runs 5            # measure 5 times, print the spread

No model server and no Go peers (a short start): Envoy → sink route through A (no ext_authz),
B (trivial Python authz) and C (extauthz), `ROUNDS` rounds with the path order rotated.

Gated: only figures that carry over between processors — extauthz (C) against the trivial
Python authz (B), both Python on grpc.aio, measured interleaved in the same run:
- `c1_added_p50_C_over_B`: latency each adds over Envoy alone at concurrency 1, (C−A)/(B−A).
  Subtracting A removes Envoy's C++ share, whose speed relative to Python differs by processor
  (an AMD and an Intel machine gave C/A 3.8 and 6.4–8.1 for the same code).
- `c8_cpu_per_request_C_over_B`: CPU time the guard process spends per request at concurrency 8
  (from /proc/<pid>/task/*/schedstat, ns resolution). CPU time, unlike wall time, hardly moves
  when another process competes for the cores.
- `c8_rps_B_over_C`: throughput at concurrency 8.
Each is the median of its per-round values. C/A and the absolute figures are reported, never
gated. Every measurement records the CPU model. `tests/bench_gate/` runs the gate in
`make test`, and shows it failing on injected slowdowns.

Refresh the baseline deliberately, after a change that is meant to move the numbers (and say so
in the commit): `python -m bench.gate --update-baseline`, then commit bench/baseline.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench.envoy_bench import SINK_HEADER
from bench.facts import _cpu_model
from bench.load import h2load, percentile
from bench.procs import DIGITS_PATH, BenchStack, Peers
from tests.e2e.payloads import DIGITS

BASELINE = Path(__file__).resolve().parent / "baseline.json"
ROUNDS = 10
REQUESTS = {1: 200, 8: 1500}
# ratio name → what it is; larger always means "C got slower relative to B"
RATIOS = {
    "c1_added_p50_C_over_B": "p50 latency added over Envoy alone, (C-A) / (B-A), concurrency 1",
    "c8_cpu_per_request_C_over_B": "guard CPU time per request, C / B, concurrency 8",
    "c8_rps_B_over_C": "throughput, B / C, concurrency 8",
}
# Reported for context, never gated: they depend on the processor (Python vs Envoy's C++).
REPORTED = {
    "c1_p50_C_over_B": "p50 latency, C / B, concurrency 1",
    "c1_p50_C_over_A": "p50 latency, C / A, concurrency 1",
}
# Tolerances: the measured noise, max over median of a ratio in 10 gate runs with a CPU hog on
# one core — latency 1.30, CPU time 1.045, throughput 1.10 (and 1.35 / 1.06 / 1.20 while four
# other test suites ran beside the hog, load average ~10) — plus room for another processor.
# CPU time carries the sensitivity; latency at c=1 is the noisiest. The CPU figure also falls
# when the machine is busy (asyncio batches more requests per wake-up): 2.54–2.89 in 5 runs on
# 2026-12-01 as helpers started beside it. The self-test's slowdown is fixed work
# (bench/slowdown.py), not a busy-wait on the clock: a busy-wait burnt less CPU when preempted
# and a CI run saw "300 µs" move the figure only +25 %. As work, 300 µs moved it +38 % and
# +57 % over the baseline under load (2 of 2 caught).
TOLERANCE = {
    "c1_added_p50_C_over_B": 0.50,
    "c8_cpu_per_request_C_over_B": 0.25,
    "c8_rps_B_over_C": 0.40,
}
DEFAULT_TOLERANCE = 0.25


@dataclass
class Verdict:
    ok: bool
    lines: list[str]


def cpu_ns(pid: int) -> int:
    """CPU time (ns) the process has used so far, summed over its live threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):  # a thread that just ended
            continue
    return total


def measure(
    *, extauthz_delay_us: int = 0, rounds: int = ROUNDS, log: Any = print
) -> dict[str, Any]:
    """One short run; returns the ratios (median over rounds) and the absolute medians."""
    run_dir = Path(tempfile.mkdtemp(prefix="extauthz-gate-"))
    started = time.monotonic()
    bs = BenchStack(
        run_dir, model=False, peers=Peers("", False, []), extauthz_delay_us=extauthz_delay_us
    )
    per_round: dict[str, list[float]] = {name: [] for name in {**RATIOS, **REPORTED}}
    absolute: dict[str, list[float]] = {}
    try:
        bs.up()
        pids = {"B": bs.pid("trivial_authz"), "C": bs.pid("extauthz")}
        if None in pids.values():
            raise RuntimeError(f"no pid for a guard: {pids}")
        body = json.dumps(DIGITS).encode()
        headers = {
            "authorization": f"Bearer {bs.key}",
            "content-type": "application/json",
            SINK_HEADER: "1",
        }

        def url(path: str) -> str:
            return f"http://127.0.0.1:{bs.listener_ports[path]}{DIGITS_PATH}"

        for path in ("A", "B", "C"):  # warm-up
            h2load(url(path), concurrency=8, requests=400, headers=headers, body=body)
        for r in range(rounds):
            p50: dict[str, float] = {}
            order = ["A", "B", "C"][r % 3 :] + ["A", "B", "C"][: r % 3]
            for path in order:
                run = h2load(
                    url(path), concurrency=1, requests=REQUESTS[1], headers=headers, body=body
                )
                _check(run.statuses, path)
                p50[path] = percentile(sorted(run.latencies_us), 50)
                absolute.setdefault(f"c1_p50_us_{path}", []).append(p50[path])
            rps: dict[str, float] = {}
            cpu_us: dict[str, float] = {}
            for path in order[::-1]:
                if path == "A":
                    continue
                before = cpu_ns(pids[path])
                run = h2load(
                    url(path), concurrency=8, requests=REQUESTS[8], headers=headers, body=body
                )
                cpu_us[path] = (cpu_ns(pids[path]) - before) / 1000 / REQUESTS[8]
                _check(run.statuses, path)
                rps[path] = run.rps
                absolute.setdefault(f"c8_rps_{path}", []).append(run.rps)
                absolute.setdefault(f"c8_cpu_us_per_request_{path}", []).append(cpu_us[path])
            added_b = max(p50["B"] - p50["A"], 1.0)
            per_round["c1_added_p50_C_over_B"].append((p50["C"] - p50["A"]) / added_b)
            per_round["c8_cpu_per_request_C_over_B"].append(cpu_us["C"] / cpu_us["B"])
            per_round["c8_rps_B_over_C"].append(rps["B"] / rps["C"])
            per_round["c1_p50_C_over_B"].append(p50["C"] / p50["B"])
            per_round["c1_p50_C_over_A"].append(p50["C"] / p50["A"])
    finally:
        bs.down()
        shutil.rmtree(run_dir, ignore_errors=True)
    result = {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "ratios": {k: round(median(per_round[k]), 4) for k in RATIOS},
        "reported": {k: round(median(per_round[k]), 4) for k in REPORTED},
        "per_round": {k: [round(x, 4) for x in v] for k, v in per_round.items()},
        "absolute": {k: round(median(v), 1) for k, v in absolute.items()},
        "seconds": round(time.monotonic() - started, 1),
        "extauthz_delay_us": extauthz_delay_us,
    }
    log(f"gate measured in {result['seconds']} s on {result['cpu_model']}: {result['ratios']}")
    log(f"  reported, not gated: {result['reported']}")
    log(f"  absolute, for context: {result['absolute']}")
    return result


def _check(statuses: dict[int, int], path: str) -> None:
    """Every answer a 200, but for a rare 503 when a loaded machine blows a fail-closed budget
    (Redis 0.1 s, OPA 0.25 s): more than 1 % is an error, not a measurement."""
    total = sum(statuses.values())
    unexpected = {s: n for s, n in statuses.items() if s != 200}
    if set(unexpected) - {503} or sum(unexpected.values()) > total / 100:
        raise RuntimeError(f"path {path}: statuses {statuses}")


def compare(measured: dict[str, float], baseline: dict[str, Any]) -> Verdict:
    """Fails when a ratio exceeds its baseline by more than its tolerance."""
    ok = True
    lines = []
    tolerances = baseline.get("tolerance", {})
    for name, base in baseline["ratios"].items():
        if name not in measured:
            ok = False
            lines.append(f"FAIL {name}: not measured")
            continue
        tol = float(tolerances.get(name, DEFAULT_TOLERANCE))
        limit = base * (1 + tol)
        value = measured[name]
        change = value / base - 1
        if value > limit:
            ok = False
            verdict = "FAIL"
        else:
            verdict = "ok  "
        lines.append(
            f"{verdict} {name} = {value:.3f} (baseline {base:.3f}, {change:+.0%}, "
            f"limit {limit:.3f} = +{tol:.0%})  [{RATIOS.get(name, name)}]"
        )
        if value < base / (1 + tol):
            lines.append(f"     {name} improved beyond the tolerance: consider --update-baseline")
    return Verdict(ok, lines)


def gate(log: Any = print, baseline: dict[str, Any] | None = None) -> Verdict:
    """Measure and compare; on a shared machine a regression must show twice, not once."""
    baseline = baseline if baseline is not None else load_baseline()
    verdict = compare(measure(log=log)["ratios"], baseline)
    if not verdict.ok:
        log("\n".join(verdict.lines) + "\nre-measuring once")
        verdict = compare(measure(log=log)["ratios"], baseline)
    return verdict


def load_baseline(path: Path = BASELINE) -> dict[str, Any]:
    return json.loads(path.read_text())


def update_baseline(runs: int, path: Path = BASELINE) -> dict[str, Any]:
    results = [measure() for _ in range(runs)]
    ratios = {k: round(median(r["ratios"][k] for r in results), 4) for k in RATIOS}
    spread = {
        k: {
            "min": min(r["ratios"][k] for r in results),
            "max": max(r["ratios"][k] for r in results),
            "max_over_min": round(
                max(r["ratios"][k] for r in results) / min(r["ratios"][k] for r in results), 3
            ),
        }
        for k in RATIOS
    }
    doc = {
        "about": "Ratios the CI gate (bench/gate.py) compares against; refresh deliberately with "
        "`python -m bench.gate --update-baseline` and commit the file.",
        "refreshed": time.strftime("%Y-%m-%d"),
        "cpu_model": results[0]["cpu_model"],
        "ratios": ratios,
        "tolerance": TOLERANCE,
        "spread_over_runs": {"runs": runs, **spread},
        "reported_for_context": results[len(results) // 2]["reported"],
        "absolute_for_context": results[len(results) // 2]["absolute"],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--update-baseline", action="store_true")
    parser.add_argument("--runs", type=int, default=1, help="measurements (baseline: default 3)")
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.add_argument("--json", type=Path, help="append each measurement as a JSON line here")
    parser.add_argument(
        "--delay-us", type=int, default=0, help="burn this much CPU per Check (self-test only)"
    )
    args = parser.parse_args()
    if args.update_baseline:
        doc = update_baseline(max(args.runs, 3), args.baseline)
        print(json.dumps(doc, indent=1))
        return
    baseline = load_baseline(args.baseline)
    if args.runs == 1 and not args.json and not args.delay_us:
        verdict = gate(baseline=baseline)
        print("\n".join(verdict.lines))
        sys.exit(0 if verdict.ok else 1)
    failures = 0
    for _ in range(args.runs):
        result = measure(extauthz_delay_us=args.delay_us)
        verdict = compare(result["ratios"], baseline)
        failures += not verdict.ok
        print("\n".join(verdict.lines))
        if args.json:
            with args.json.open("a") as out:
                out.write(json.dumps({**result, "ok": verdict.ok}) + "\n")
    print(f"{failures} of {args.runs} single measurements over the limits")
    sys.exit(0 if failures == 0 else 1)


if __name__ == "__main__":
    main()
