"""`make bench`: micro benchmarks, the end-to-end comparison (with a profile), the report.

    .venv/bin/python -m bench.run [--out bench/results/<date>] [--rounds 3] [--quick]

Writes micro.json, e2e.json, facts.json, profile-extauthz.txt, cdf-c*.png and report.md into
the output directory (default bench/results/<today>). Needs h2load (scripts/install_bench_tools.sh);
the Go peers are used when installed and reported as missing otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench import facts, report
from bench.e2e import run as e2e
from bench.load import h2load_path
from extauthz.dev.devstack import ROOT


def run_micro(out_dir: Path) -> None:
    json_path = out_dir / "micro.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench/micro",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            f"--benchmark-json={json_path}",
            "--benchmark-sort=name",
            "--benchmark-columns=median,iqr,rounds",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    print(result.stdout[-3000:])
    if result.returncode != 0:
        raise SystemExit(
            f"micro benchmarks failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
        )
    skipped = [
        ln.split(" ", 2)[-1] for ln in result.stdout.splitlines() if ln.startswith("SKIPPED")
    ]
    doc = json.loads(json_path.read_text())
    doc["skipped"] = skipped
    for bench in doc["benchmarks"]:  # the raw timings make the file megabytes; stats suffice
        bench["stats"].pop("data", None)
    json_path.write_text(json.dumps(doc, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / time.strftime("%Y-%m-%d")
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="1 round, c=1 and 8, fewer requests")
    parser.add_argument("--skip-micro", action="store_true")
    args = parser.parse_args()
    h2load_path()  # fail early, with the install hint
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    (out / "facts.json").write_text(json.dumps(facts.gather(), indent=1))
    if not args.skip_micro:
        print("== micro benchmarks (bench/micro)")
        run_micro(out)
    print("== end to end (bench/e2e)")
    if args.quick:
        e2e.run(out, rounds=1, concurrencies=(1, 8), requests={1: 200, 8: 600})
    else:
        e2e.run(out, rounds=args.rounds)
    path = report.render(out)
    print(f"== wrote {path} in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
