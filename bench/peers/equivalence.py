"""Does peer D decide on the same facts as extauthz? Compare, for the benchmark's request, the
policy input extauthz builds (extauthz.policy.input.build_input) with the one the peer's Rego
builds from opa-envoy-plugin's input document (data.envoy.authz.policy_input, via `opa eval`).

The report prints the result, so a drift in either (extauthz's input gaining a field, say) shows
as "not equivalent" instead of silently comparing different work.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from google.protobuf.json_format import MessageToDict

from extauthz.policy.input import build_input
from extauthz.policy.tools import IGNORE_ARGS
from extauthz.request import parse_check_request
from extauthz.types import Principal

POLICY = Path(__file__).resolve().parent / "policy"


def envoy_plugin_input(request: CheckRequest) -> dict[str, Any]:
    """opa-envoy-plugin's input document for `request` (as bench/peers/opa-authz builds it)."""
    doc: dict[str, Any] = MessageToDict(request)
    http = request.attributes.request.http
    path, _, _ = http.path.partition("?")
    doc["parsed_path"] = path.lstrip("/").split("/")
    doc["parsed_query"] = {}
    body = http.raw_body or http.body.encode()
    parsed = None
    if body and "json" in http.headers.get("content-type", ""):
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
    doc["parsed_body"] = parsed
    doc["truncated_body"] = False
    return doc


def check(
    opa: str,
    request: CheckRequest,
    principal: Principal,
    policy_dir: Path,
    peer_data: Path,
    max_body_bytes: int,
) -> tuple[bool, str]:
    """(equivalent, a one-line explanation)."""
    ours = build_input(parse_check_request(request, max_body_bytes), principal)
    out = subprocess.run(
        [
            *[opa, "eval", "--format", "json", "--stdin-input"],
            *IGNORE_ARGS,
            *["-d", str(POLICY), "-d", str(policy_dir), "-d", str(peer_data)],
            "data.envoy.authz.policy_input",
        ],
        input=json.dumps(envoy_plugin_input(request)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if out.returncode != 0:
        return False, f"opa eval failed: {out.stderr.strip()[:300]}"
    result = json.loads(out.stdout).get("result") or []
    if not result:
        return False, "the peer's policy_input is undefined for the benchmark request"
    theirs = result[0]["expressions"][0]["value"]
    if theirs == ours:
        return True, "the peer's Rego builds the same policy input as extauthz for this request"
    diffs = sorted(_diff(ours, theirs))
    return False, "policy inputs differ at: " + ", ".join(diffs[:8])


def eval_times(
    opa: str,
    request: CheckRequest,
    principal: Principal,
    policy_dir: Path,
    peer_data: Path,
    max_body_bytes: int,
) -> dict[str, float]:
    """`opa bench` (in-process evaluation, µs per op) of the two policies for this request:
    extauthz's rule on extauthz's input (what a decision-cache miss costs OPA) and the peer's
    query on opa-envoy-plugin's input (what D pays on every request)."""
    ours = build_input(parse_check_request(request, max_body_bytes), principal)
    cases = {
        "extauthz: data.extauthz.authz.decision": (ours, [policy_dir]),
        "peer D: data.envoy.authz.decision": (
            envoy_plugin_input(request),
            [POLICY, policy_dir, peer_data],
        ),
    }
    out: dict[str, float] = {}
    for name, (doc, roots) in cases.items():
        query = name.split(": ", 1)[1]
        argv = [opa, "bench", "--format", "json", "--stdin-input"]
        argv += IGNORE_ARGS
        for root in roots:
            argv += ["-d", str(root)]
        res = subprocess.run(
            [*argv, query],
            input=json.dumps(doc),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        try:
            bench = json.loads(res.stdout)
            out[name] = round(bench["T"] / bench["N"] / 1000, 1)
        except (ValueError, KeyError, ZeroDivisionError):
            out[name] = float("nan")
    return out


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for key in set(a) | set(b):
            out += _diff(a.get(key, "<missing>"), b.get(key, "<missing>"), f"{prefix}.{key}")
        return out
    return [] if a == b else [f"{prefix or '.'} (extauthz {a!r} vs peer {b!r})"]
