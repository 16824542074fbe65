"""`extauthz policy`: for policy authors (test, eval, explain, shadow diff)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from extauthz.cli.common import csv, with_redis
from extauthz.settings import load_settings


def _policy_dir() -> Path:
    from extauthz.dev.devstack import ROOT

    path = load_settings().policy_dir
    return path if path.is_absolute() else ROOT / path


def _opa() -> str:
    from extauthz.dev.devstack import find_opa

    return find_opa(load_settings())


def _read_json(source: str) -> object:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return json.loads(text)


def cmd_policy_test(args: argparse.Namespace) -> int:
    from extauthz.policy.tools import run_tests

    ok, report = run_tests(_opa(), _policy_dir(), args.min_coverage)
    print(report)
    return 0 if ok else 1


def cmd_policy_eval(args: argparse.Namespace) -> int:
    from extauthz.policy.tools import evaluate

    policy_input = _read_json(args.input)
    if isinstance(policy_input, dict) and "input" in policy_input and len(policy_input) == 1:
        policy_input = policy_input["input"]  # also accept OPA's {"input": ...} envelope
    path = args.path or load_settings().opa_decision_path
    try:
        decision = evaluate(_opa(), _policy_dir(), policy_input, path)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(decision, indent=2, sort_keys=True))
    if isinstance(decision, dict):
        verdict = "ALLOW" if decision.get("allow") else f"DENY {decision.get('status')}"
        print(f"{verdict}  reason: {decision.get('reason')}", file=sys.stderr)
    return 0


def cmd_policy_explain(args: argparse.Namespace) -> int:
    from extauthz.policy.tools import explain
    from extauthz.types import Principal

    settings = load_settings()
    if args.api_key:
        principal = with_redis(lambda redis, s: _principal_for_key(redis, s, args.api_key))
        if principal is None:
            print("that API key does not authenticate", file=sys.stderr)
            return 1
    else:
        principal = Principal(
            args.subject, args.roles, args.projects, args.tier, args.credential, "explain"
        )
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    body = Path(args.body).read_bytes() if args.body else b""
    doc = explain(
        principal,
        args.method.upper(),
        args.path,
        headers,
        body,
        args.source_ip,
        settings.max_body_bytes,
        _bucket(settings, principal.subject, args.path),
    )
    print(json.dumps(doc, indent=2))
    _show_plan(doc, args.degrade)
    return 0


def _bucket(settings, subject: str, path: str) -> int:  # type: ignore[no-untyped-def]
    """The caller's sticky bucket, as the service computes it (the deployment's pepper)."""
    from extauthz.policy.rollout import StickyBucket, bucket_key
    from extauthz.request import parse_route
    from extauthz.wiring import key_pepper

    model = parse_route("POST", path.split("?")[0]).name or parse_route("GET", path).name
    return StickyBucket(bucket_key(key_pepper(settings)))(subject, model) if model else 0


def _show_plan(doc: dict, degrade: int) -> None:
    """The decision's response plan on stderr (stdout stays the input, for `policy eval`)."""
    from extauthz.policy.tools import evaluate, plan_of

    try:
        decision = evaluate(_opa(), _policy_dir(), doc, load_settings().opa_decision_path)
        plan = plan_of(decision, degrade, doc["request"]["action"])
    except (RuntimeError, ValueError) as exc:
        print(f"response plan: unavailable ({exc})", file=sys.stderr)
        return
    print(f"response plan (degrade {degrade}): {json.dumps(plan)}", file=sys.stderr)


async def _principal_for_key(redis, settings, key: str):  # type: ignore[no-untyped-def]
    from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyStore
    from extauthz.types import Denied
    from extauthz.wiring import key_pepper

    pepper = key_pepper(settings)
    try:
        return await ApiKeyAuthenticator(KeyStore(redis, pepper), pepper).authenticate(key)
    except Denied:
        return None


def cmd_policy_diff(args: argparse.Namespace) -> int:
    from extauthz.policy.shadow import summarize

    log_path = Path(args.log or load_settings().shadow_log)
    summary = summarize(log_path)
    print(f"shadow disagreements in {log_path}: {summary['total']}")
    pairs = sorted(summary["pairs"].items(), key=lambda kv: -kv[1])
    for (enforced, candidate), n in pairs:
        print(f"  {n:>7}  enforced {enforced:<34} candidate {candidate}")
    if args.examples:
        for pair, example in summary["examples"].items():
            print(f"\n  e.g. {pair[0]} -> {pair[1]}:\n  {json.dumps(example)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="for policy authors").add_subparsers(
        dest="policy_command", required=True
    )
    ptest = policy.add_parser("test", help="opa check --strict, opa fmt, opa test with coverage")
    ptest.add_argument("--min-coverage", type=float, default=95.0)
    ptest.set_defaults(func=cmd_policy_test)
    peval = policy.add_parser("eval", help="the decision a given input gets, with its reason")
    peval.add_argument("--input", required=True, help="input JSON file, or - for stdin")
    peval.add_argument("--path", default="", help="rule to evaluate (default: the enforced one)")
    peval.set_defaults(func=cmd_policy_eval)
    pexplain = policy.add_parser(
        "explain", help="the input extauthz would build for an HTTP request (pipe into eval)"
    )
    pexplain.add_argument("--method", default="POST")
    pexplain.add_argument("--path", required=True, help="e.g. /v2/models/digits/infer")
    pexplain.add_argument("--header", action="append", default=[], help="'name: value'")
    pexplain.add_argument("--body", help="file with the request body")
    pexplain.add_argument("--source-ip", default="127.0.0.1")
    pexplain.add_argument("--api-key", help="resolve the caller from this key (needs Redis)")
    pexplain.add_argument("--subject", default="someone")
    pexplain.add_argument("--roles", type=csv, default=())
    pexplain.add_argument("--projects", type=csv, default=())
    pexplain.add_argument("--tier", default="standard")
    pexplain.add_argument("--credential", default="api_key")
    pexplain.add_argument(
        "--degrade",
        type=int,
        default=0,
        choices=(0, 1, 2, 3),
        help="the caller's degradation level, for the response plan shown on stderr",
    )
    pexplain.set_defaults(func=cmd_policy_explain)
    pdiff = policy.add_parser("diff", help="summary of shadow-mode disagreements")
    pdiff.add_argument("--log", help="shadow log (default: EXTAUTHZ_SHADOW_LOG)")
    pdiff.add_argument("--examples", action="store_true", help="print one input per pair")
    pdiff.set_defaults(func=cmd_policy_diff)
