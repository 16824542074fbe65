"""What `extauthz policy ...` runs for policy authors: test, eval, explain, diff."""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from extauthz.policy.input import build_input
from extauthz.request import parse_check_request
from extauthz.shaping.plan import merge_degrade, parse_hints
from extauthz.types import Principal, ResponsePlan

# Files OPA must not load as policy or data when serving the pack.
IGNORE = ("*_test.rego", "*.md", "*.schema.json")
# the same, as `opa run` / `opa eval` arguments: what OPA loads from a policy directory
IGNORE_ARGS = tuple(arg for pattern in IGNORE for arg in ("--ignore", pattern))


def run_tests(opa: str, policy_dir: Path, min_coverage: float) -> tuple[bool, str]:
    """`opa check --strict`, `opa fmt --list`, `opa test --coverage`; (ok, report)."""
    lines = []
    check = subprocess.run(
        [opa, "check", "--strict", str(policy_dir)], capture_output=True, text=True
    )
    if check.returncode != 0:
        return False, f"opa check --strict failed:\n{check.stdout}{check.stderr}"
    fmt = subprocess.run([opa, "fmt", "--list", str(policy_dir)], capture_output=True, text=True)
    if fmt.stdout.strip():
        return False, f"opa fmt would change (run `make fmt`):\n{fmt.stdout}"
    verbose = subprocess.run([opa, "test", str(policy_dir)], capture_output=True, text=True)
    if verbose.returncode != 0:
        return False, f"opa test failed:\n{verbose.stdout}{verbose.stderr}"
    lines.append(verbose.stdout.strip().splitlines()[-1])
    cov = subprocess.run(
        [opa, "test", str(policy_dir), "--coverage", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(cov.stdout)
    for name, f in sorted(report.get("files", {}).items()):
        if not name.endswith("_test.rego"):
            lines.append(f"  coverage {f.get('coverage', 0):6.2f}%  {name}")
    total = float(report.get("coverage", 0.0))
    lines.append(f"rego coverage {total:.2f}% (minimum {min_coverage:.0f}%)")
    problems = check_plans(opa, policy_dir)
    lines.extend(f"response plan refused by the service: {p}" for p in problems)
    if not problems:
        lines.append("response plans: every catalog entry's hints parse as the service parses them")
    return total >= min_coverage and not problems, "\n".join(lines)


def check_plans(opa: str, policy_dir: Path) -> list[str]:
    """Every catalog entry's `response` hints through the service's own parser (the service
    answers 503 for a decision whose plan it cannot parse)."""
    catalog = evaluate(opa, policy_dir, {}, "extauthz/catalog")
    problems = []
    for name, entry in sorted(catalog.items()):
        hints = entry.get("response", {}) if isinstance(entry, dict) else None
        try:
            if not isinstance(hints, dict):
                raise ValueError("response is not an object")
            parse_hints(hints)
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
    return problems


def plan_of(decision: dict[str, Any], degrade: int = 0, action: str = "infer") -> dict[str, Any]:
    """The response plan the service derives from a decision (and a degradation level): what
    `policy explain` shows."""
    if not decision.get("allow"):
        return {"shaped": False, "reason": "denied: no answer to shape"}
    plan = merge_degrade(parse_hints(decision.get("response") or {}), degrade)
    if action != "infer":
        plan = ResponsePlan(cache=plan.cache)
    return {"shaped": plan.shapes, **asdict(plan)}


def evaluate(opa: str, policy_dir: Path, policy_input: Any, rule_path: str) -> dict[str, Any]:
    """The decision `rule_path` gives `policy_input`, evaluated locally by `opa eval`."""
    query = "data." + rule_path.strip("/").replace("/", ".")
    args = [opa, "eval", "--format", "json", "--stdin-input", query]
    for pattern in IGNORE:
        args += ["--ignore", pattern]
    args += ["-d", str(policy_dir)]
    out = subprocess.run(
        args, input=json.dumps(policy_input), capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"opa eval failed: {out.stderr or out.stdout}")
    result = json.loads(out.stdout).get("result") or []
    if not result:
        raise RuntimeError(f"{query} is undefined for this input")
    return result[0]["expressions"][0]["value"]


def explain(
    principal: Principal,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    source_ip: str,
    max_body_bytes: int,
    bucket: int = 0,
) -> dict[str, Any]:
    """The input extauthz builds for this HTTP request and caller: the same parser and
    builder the service runs on a CheckRequest (`bucket`: the caller's sticky bucket)."""
    req = CheckRequest()
    http = req.attributes.request.http
    http.method = method
    http.path = path
    http.headers.update({k.lower(): v for k, v in headers.items()})
    http.raw_body = body
    req.attributes.source.address.socket_address.address = source_ip
    return build_input(parse_check_request(req, max_body_bytes), principal, bucket)
