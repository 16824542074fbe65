"""`make redteam`: the attacks of bench/redteam/attacks.py through a real stack, defense off and on.

    .venv/bin/python -m bench.redteam.run [--defense off|on|both] [--short] [--out DIR]
        [--rows-per-request N]

For each defense mode a fresh stack on free ports (Redis, OPA, MLServer, extauthz, Envoy; with
`on`, the analytics worker too, when this tree has `extauthz analytics run`), one API key per
caller (analyst, project vision, tier standard), then every attack and the benign clients at
once, each a `.venv-redteam` process. Writes DIR/redteam.md, DIR/redteam.png and
DIR/redteam.json (DIR defaults to bench/results/<date>/). Loopback only, bounded in rows and
time: about 4 minutes a mode at full size, well under a minute `--short`.

Sources: each attacker from its own /24 (127.0.1x.1), the Sybil's ten keys from 127.0.1.1–10
(one /24), benign clients from 127.0.2x.1. extauthz sees these addresses: with no trusted
proxies (`EXTAUTHZ_TRUSTED_HOPS` 0) the client address is the peer Envoy reports
(`extauthz/request.py`, `client_address`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from extauthz.authn.apikeys import KeyStore
from extauthz.dev.devstack import ORDER, ROOT, Stack
from extauthz.dev.runner import Component, free_ports
from extauthz.settings import Settings
from extauthz.store.schema import (
    RiskFields,
    prefix_tag,
    quarantine_key,
    risk_key,
    source_prefix,
    subject_tag,
)
from extauthz.wiring import key_pepper, redis_client

RESULTS = ROOT / "bench" / "results"
VENV = ROOT / ".venv-redteam"
TIER = "standard"


@dataclass
class Plan:
    """One client of the run: an attack (or the benign replay) and its callers' sources."""

    attack: str
    sources: list[str]
    budget: int
    label: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label or self.attack


# Evasion succeeds with an adversarial example within EPS_FACTOR x the smallest L2 step that
# changes the digit's label (exact for the linear victim; attacks.run_evasion).
EPS_FACTOR = 1.5
NETWORK_PER_MINUTE = 3000  # the standard tier's network_minute window (rego/extauthz/tiers)


def full_plan() -> tuple[list[Plan], float]:
    sybil_rate = NETWORK_PER_MINUTE / 60 / 10 * 0.9  # ten keys share one network's window
    return [
        Plan("eqsolve", ["127.0.10.1"], 300, params={"step": 5}),
        Plan("knockoff", ["127.0.11.1"], 2000, params={"step": 10}),
        Plan(
            "knockoff",
            ["127.0.15.1"],
            2000,
            label="knockoff-natural",
            params={"step": 10, "seeds": 225, "sigma": 1.0},
        ),
        Plan("copycat", ["127.0.12.1"], 2000, params={"step": 10}),
        Plan("hopskipjump", ["127.0.13.1"], 2500, params={"eps_factor": EPS_FACTOR, "target": 3}),
        Plan("boundary", ["127.0.14.1"], 2500, params={"eps_factor": EPS_FACTOR, "target": 3}),
        Plan(
            "knockoff",
            [f"127.0.1.{i}" for i in range(1, 11)],
            3000,
            label="sybil",
            params={"step": 20, "max_rate": sybil_rate},
        ),
        Plan(
            "benign",
            [f"127.0.{20 + i}.1" for i in range(6)],
            10**6,
            params={"pause": [1.5, 4.5], "seconds": 150},
        ),
    ], 260.0


def short_plan() -> tuple[list[Plan], float]:
    """The test's version: tiny budgets, same machinery."""
    return [
        Plan("eqsolve", ["127.0.10.1"], 80, params={"step": 5}),
        Plan("knockoff", ["127.0.11.1"], 60, params={"step": 10}),
        Plan("hopskipjump", ["127.0.13.1"], 120, params={"eps_factor": EPS_FACTOR, "target": 3}),
        Plan(
            "knockoff",
            [f"127.0.1.{i}" for i in range(1, 11)],
            60,
            label="sybil",
            params={"step": 10, "max_rate": 4.0},
        ),
        Plan(
            "benign",
            [f"127.0.{20 + i}.1" for i in range(2)],
            10**6,
            params={"pause": [0.2, 0.6], "seconds": 6},
        ),
    ], 45.0


def redteam_settings(run_dir: Path) -> Settings:
    """The service's defaults (no test-suite overrides) on free ports, a copy of rego/."""
    from tests.conftest import stack_settings

    base = stack_settings(run_dir)
    defaults = Settings()
    keep = ("auth_failure_limit", "policy_denial_limit", "policy_denial_prefix_limit")
    return base.model_copy(
        update={
            "shadow_decision_path": defaults.shadow_decision_path,
            "auto_threat_ratio": defaults.auto_threat_ratio,
            **{name: getattr(defaults, name) for name in keep},
        }
    )


def nominal_limits() -> dict[str, int]:
    tiers = json.loads((ROOT / "rego/extauthz/tiers/data.json").read_text())
    return {w["name"]: int(w["limit"]) for w in tiers[TIER]}


def analytics_command() -> list[str] | None:
    """`extauthz analytics run`, when this tree has it (the defense of issue 12)."""
    probe = subprocess.run(
        [sys.executable, "-m", "extauthz", "analytics", "--help"],
        capture_output=True,
        cwd=ROOT,
    )
    return [sys.executable, "-m", "extauthz", "analytics", "run"] if probe.returncode == 0 else None


def start_stack(run_dir: Path, defense: str) -> tuple[Stack, str]:
    """A fresh stack; with defense on, the analytics worker too. Returns (stack, defense as
    run: "off", "on", or "unavailable")."""
    stack = Stack(redteam_settings(run_dir), floor_port=free_ports(1)[0], redis_aof=False)
    names = [n for n in ORDER if n != "analytics"]
    stack.up(names)
    if defense == "off":
        return stack, "off"
    if "analytics" in ORDER:
        stack.up(["analytics"])
        return stack, "on"
    command = analytics_command()
    if command is None:
        return stack, "unavailable"
    stack.runner.start(Component("analytics", command, lambda: True, env=stack.service_env()))
    return stack, "on"


def stop_stack(stack: Stack) -> None:
    if stack.running("analytics") or stack.pid("analytics"):
        stack.stop("analytics")
    stack.down()


async def _create_keys(stack: Stack, subjects: list[str]) -> dict[str, str]:
    settings = stack.settings.model_copy(update={"key_pepper_file": stack.key_pepper_file})
    client = redis_client(settings)
    try:
        store = KeyStore(client, key_pepper(settings))
        keys = {}
        for subject in subjects:
            _, key = await store.create(subject, ("analyst",), ("vision",), TIER, 86400)
            keys[subject] = key
        return keys
    finally:
        await client.aclose()


def caller_specs(plan: Plan, keys: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for i, source in enumerate(plan.sources):
        subject = subject_of(plan, i)
        net = source_prefix(source)
        out.append(
            {
                "subject": subject,
                "key": keys[subject],
                "source": source,
                "risk_key": risk_key(subject),
                "quarantine_keys": [
                    quarantine_key(subject_tag(subject)),
                    quarantine_key(prefix_tag(net)),
                ],
            }
        )
    return out


def subject_of(plan: Plan, i: int) -> str:
    return f"rt-{plan.name}-{i}" if len(plan.sources) > 1 else f"rt-{plan.name}"


def run_phase(
    stack: Stack,
    plans: list[Plan],
    seconds: float,
    workdir: Path,
    *,
    rows_per_request: int = 1,
    keys: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every plan at once against `stack`; returns the clients' results (attacks.run)."""
    if not (VENV / "bin" / "python").exists():
        raise RuntimeError(".venv-redteam missing: run `bash scripts/redteam_venv.sh`")
    subjects = [subject_of(p, i) for p in plans for i in range(len(p.sources))]
    given = keys or {}
    keys = {**given, **asyncio.run(_create_keys(stack, [s for s in subjects if s not in given]))}
    model_path = stack.run_dir / "models" / "digits" / "model.joblib"
    port = stack.settings.envoy_port
    redis_port = int(stack.settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    for plan in plans:
        spec = {
            "attack": plan.attack,
            "label": plan.name,
            "port": port,
            "redis_port": redis_port,
            "model_path": str(model_path),
            "budget": plan.budget,
            "seconds": min(seconds, plan.params.get("seconds", seconds)),
            "rows_per_request": rows_per_request,
            "nominal": nominal_limits(),
            # the risk hash's fields (the degrade level arrives with response shaping, issue 13)
            "risk_fields": [RiskFields.MULTIPLIER, getattr(RiskFields, "DEGRADE", "degrade")],
            "callers": caller_specs(plan, keys),
            **plan.params,
        }
        spec_path = workdir / f"{plan.name}.spec.json"
        out_path = workdir / f"{plan.name}.out.json"
        spec_path.write_text(json.dumps(spec))
        log = (workdir / f"{plan.name}.log").open("w")
        proc = subprocess.Popen(  # noqa: S603 - our own venv and module
            [str(VENV / "bin" / "python"), "-m", "bench.redteam.attacks", spec_path, out_path],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        )
        procs.append((plan, proc, out_path, log))
    results = []
    for plan, proc, out_path, log in procs:
        try:
            proc.wait(timeout=seconds + 180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        if proc.returncode != 0 or not out_path.exists():
            tail = (workdir / f"{plan.name}.log").read_text()[-2000:]
            raise RuntimeError(f"{plan.name} failed ({proc.returncode}):\n{tail}")
        results.append(json.loads(out_path.read_text()))
    return results


def run(modes: list[str], short: bool, out: Path, rows_per_request: int) -> dict[str, Any]:
    plans, seconds = short_plan() if short else full_plan()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "short": short,
        "rows_per_request": rows_per_request,
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "modes": {},
    }
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix=f"redteam-{mode}-") as tmp:
            t0 = time.monotonic()
            stack, defense = start_stack(Path(tmp), mode)
            try:
                if defense == "unavailable":
                    report["modes"][mode] = {"defense": defense, "results": []}
                    continue
                results = run_phase(
                    stack, plans, seconds, Path(tmp) / "clients", rows_per_request=rows_per_request
                )
            finally:
                stop_stack(stack)
            report["modes"][mode] = {
                "defense": defense,
                "seconds": round(time.monotonic() - t0, 1),
                "results": results,
            }
    from bench.redteam.report import write

    write(report, out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--defense", choices=("off", "on", "both"), default="both")
    parser.add_argument("--short", action="store_true", help="tiny budgets (the test's size)")
    parser.add_argument("--rows-per-request", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / time.strftime("%Y-%m-%d"))
    args = parser.parse_args(argv)
    modes = ["off", "on"] if args.defense == "both" else [args.defense]
    run(modes, args.short, args.out, args.rows_per_request)
    print(f"redteam: wrote {args.out / 'redteam.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
