"""extauthz command line: serve, keys, devices, policy, throttle, quarantine, envoy, dev."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from pathlib import Path

from extauthz.settings import describe_settings, load_settings

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """'30d' → seconds. Units: s, m, h, d, w (none: seconds)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 12h, 30d)")
    return int(match[1]) * _UNITS[match[2]]


_WIDTHS = (14, 16, 20, 18, 10, 9)


def _when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "never"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def cmd_serve(args: argparse.Namespace) -> int:
    from extauthz.server import run, supervise

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    workers = args.workers or settings.workers
    if args.worker_index is None and workers > 1:
        return supervise(settings, workers)
    run(settings, worker=args.worker_index is not None)
    return 0


async def _with_store(fn):  # type: ignore[no-untyped-def]
    from extauthz.authn.apikeys import KeyStore
    from extauthz.wiring import key_pepper, redis_client

    settings = load_settings()
    redis = redis_client(settings)
    try:
        return await fn(KeyStore(redis, key_pepper(settings)))
    finally:
        await redis.aclose()


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    async def rotate(store):  # type: ignore[no-untyped-def]
        return await store.rotate(args.key_id, args.overlap, args.expires_in)

    rotated = asyncio.run(_with_store(rotate))
    if rotated is None:
        print(f"no active key: {args.key_id}", file=sys.stderr)
        return 1
    old, new, key = rotated
    if args.json:
        print(json.dumps({"key_id": new.key_id, "key": key, "old_expires": old.expires}))
        return 0
    print(f"new key id: {new.key_id}  (old key {old.key_id} valid until {_when(old.expires)})")
    print(f"key:        {key}")
    print("This key is shown once; only its keyed hash is stored.", file=sys.stderr)
    return 0


async def _with_devices(fn):  # type: ignore[no-untyped-def]
    from extauthz.authn.devices import DeviceStore
    from extauthz.wiring import redis_client

    redis = redis_client(load_settings())
    try:
        return await fn(DeviceStore(redis))
    finally:
        await redis.aclose()


def cmd_devices_enroll(args: argparse.Namespace) -> int:
    try:
        jwk = json.loads(Path(args.jwk_file).read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read a JWK from {args.jwk_file}: {exc}", file=sys.stderr)
        return 1

    async def enroll(store):  # type: ignore[no-untyped-def]
        return await store.enroll(args.subject, jwk, args.trust, args.expires_in)

    try:
        record = asyncio.run(_with_devices(enroll))
    except ValueError as exc:
        print(f"not enrolled: {exc}", file=sys.stderr)
        return 1
    print(
        f"enrolled {record.thumbprint} for {record.subject}: trust {record.trust}, "
        f"expires {_when(record.expires)}"
    )
    return 0


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    async def revoke(store):  # type: ignore[no-untyped-def]
        return await store.revoke(args.thumbprint, args.subject)

    count = asyncio.run(_with_devices(revoke))
    if not count:
        print(f"no such device: {args.thumbprint}", file=sys.stderr)
        return 1
    print(f"revoked {args.thumbprint} ({count} enrollment{'s' if count > 1 else ''})")
    return 0


def cmd_devices_list(args: argparse.Namespace) -> int:
    async def list_devices(store):  # type: ignore[no-untyped-def]
        return await store.list()

    print(f"{'THUMBPRINT':<45}{'SUBJECT':<16}{'TRUST':<12}{'STATUS':<9}EXPIRES")
    for r in asyncio.run(_with_devices(list_devices)):
        status = "expired" if r.expired(time.time()) and r.status == "active" else r.status
        print(f"{r.thumbprint:<45}{r.subject:<16}{r.trust:<12}{status:<9}{_when(r.expires)}")
    return 0


def cmd_dev_token(args: argparse.Namespace) -> int:
    from extauthz.authn.dev_issuer import device_key_file

    stack = _stack(args)
    issuer, issuer_settings = stack.dev_issuer, stack.settings
    jkt = ""
    if args.dpop_key:
        key = device_key_file(Path(args.dpop_key))
        jkt = key.thumbprint()
        print(f"DPoP key {args.dpop_key}: thumbprint {jkt}", file=sys.stderr)
    if args.ttl > issuer_settings.jwt_max_lifetime:
        print(
            f"warning: lifetime {args.ttl}s is over EXTAUTHZ_JWT_MAX_LIFETIME "
            f"({issuer_settings.jwt_max_lifetime}s): the service will refuse this token",
            file=sys.stderr,
        )
    token = issuer.mint(args.subject, args.roles, args.projects, args.tier, args.ttl, jkt)
    print(token)
    return 0


def cmd_dev_certs(args: argparse.Namespace) -> int:
    stack = _stack(args)
    ca = stack.dev_ca
    ca.ensure()
    print(f"CA:      {ca.ca_file}")
    print(f"server:  {ca.server_cert} (Envoy's mTLS listener, {stack.envoy_mtls_url})")
    if args.client:
        if not (args.uri or args.dns):
            print("a client certificate needs --uri and/or --dns", file=sys.stderr)
            return 1
        cert, key = ca.issue_client(args.client, uri=args.uri, dns=args.dns)
        print(f"client:  {cert}  key {key}")
    return 0


def cmd_keys_create(args: argparse.Namespace) -> int:
    async def create(store):  # type: ignore[no-untyped-def]
        return await store.create(
            args.subject, args.roles, args.projects, args.tier, args.expires_in, args.cidrs
        )

    record, key = asyncio.run(_with_store(create))
    if args.json:
        print(
            json.dumps(
                {
                    "key_id": record.key_id,
                    "key": key,
                    "subject": record.subject,
                    "expires": record.expires,
                }
            )
        )
    else:
        print(f"key id:  {record.key_id}")
        print(
            f"subject: {record.subject}  roles: {','.join(record.roles)}  "
            f"projects: {','.join(record.projects)}  tier: {record.tier}"
        )
        print(f"expires: {_when(record.expires)}")
        print(f"key:     {key}")
        print("This key is shown once; only its keyed hash is stored.", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    async def revoke(store):  # type: ignore[no-untyped-def]
        return await store.revoke(args.key_id)

    if asyncio.run(_with_store(revoke)):
        print(f"revoked {args.key_id}")
        return 0
    print(f"no such key: {args.key_id}", file=sys.stderr)
    return 1


def cmd_keys_list(args: argparse.Namespace) -> int:
    async def list_keys(store):  # type: ignore[no-untyped-def]
        return await store.list()

    records = asyncio.run(_with_store(list_keys))
    header = ("KEY ID", "SUBJECT", "ROLES", "PROJECTS", "TIER", "STATUS")
    print("".join(f"{h:<{w}}" for h, w in zip(header, _WIDTHS, strict=True)) + "EXPIRES")
    for r in records:
        status = r.status if not (r.expires and r.expires <= time.time()) else "expired"
        row = (r.key_id, r.subject, ",".join(r.roles), ",".join(r.projects), r.tier, status)
        print("".join(f"{c:<{w}}" for c, w in zip(row, _WIDTHS, strict=True)) + _when(r.expires))
    return 0


def _stack(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from extauthz.devstack import Stack

    return Stack(load_settings())


def cmd_envoy_render(args: argparse.Namespace) -> int:
    stack = _stack(args)
    stack.logs.mkdir(parents=True, exist_ok=True)
    print(stack.render_envoy().read_text())
    return 0


def cmd_dev_up(args: argparse.Namespace) -> int:
    from extauthz.devstack import StackError

    stack = _stack(args)
    try:
        stack.up()
    except StackError as exc:
        print(f"stack failed: {exc}", file=sys.stderr)
        return 1
    s = stack.settings
    print(f"envoy     {stack.envoy_url}  (admin http://127.0.0.1:{s.envoy_admin_port})")
    print(f"extauthz  grpc 127.0.0.1:{s.port}")
    print(f"opa       http://127.0.0.1:{s.opa_port}")
    print(f"redis     redis://127.0.0.1:{s.redis_port}")
    print(f"mlserver  http://127.0.0.1:{s.model_port}  (reach it through envoy)")
    print(f"logs      {stack.logs}")
    return 0


def cmd_dev_down(args: argparse.Namespace) -> int:
    _stack(args).down()
    return 0


def cmd_dev_status(args: argparse.Namespace) -> int:
    for name, up in _stack(args).status().items():
        print(f"{name:<10}{'running' if up else 'stopped'}")
    return 0


def cmd_dev_demo(args: argparse.Namespace) -> int:
    from extauthz.demo import run_demo

    return run_demo(_stack(args))


def _policy_dir() -> Path:
    from extauthz.devstack import ROOT

    path = load_settings().policy_dir
    return path if path.is_absolute() else ROOT / path


def _opa() -> str:
    from extauthz.devstack import find_opa

    return find_opa(load_settings())


def cmd_policy_test(args: argparse.Namespace) -> int:
    from extauthz.policy.tools import run_tests

    ok, report = run_tests(_opa(), _policy_dir(), args.min_coverage)
    print(report)
    return 0 if ok else 1


def _read_json(source: str) -> object:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    return json.loads(text)


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
        principal = asyncio.run(_principal_for_key(args.api_key))
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
    )
    print(json.dumps(doc, indent=2))
    return 0


async def _principal_for_key(key: str):  # type: ignore[no-untyped-def]
    from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyStore
    from extauthz.types import Denied
    from extauthz.wiring import key_pepper, redis_client

    settings = load_settings()
    redis = redis_client(settings)
    pepper = key_pepper(settings)
    try:
        return await ApiKeyAuthenticator(KeyStore(redis, pepper), pepper).authenticate(key)
    except Denied:
        return None
    finally:
        await redis.aclose()


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


async def _with_throttle(fn):  # type: ignore[no-untyped-def]
    from extauthz.limits.throttle import ThrottleStore
    from extauthz.wiring import redis_client

    settings = load_settings()
    redis = redis_client(settings)
    try:
        return await fn(ThrottleStore(redis, settings.source_prefix_v4, settings.source_prefix_v6))
    finally:
        await redis.aclose()


def cmd_throttle_set(args: argparse.Namespace) -> int:
    if (args.level is None) == (args.subject is None):
        print("give either --level or --subject (with --multiplier)", file=sys.stderr)
        return 2
    if args.subject is not None and args.multiplier is None:
        print("--subject needs --multiplier (e.g. 0.5: half its limits)", file=sys.stderr)
        return 2

    async def apply(store):  # type: ignore[no-untyped-def]
        if args.level is not None:
            return await store.set_threat(args.level, args.ttl, args.reason)
        return await store.set_risk(args.subject, args.multiplier, args.ttl, args.reason)

    try:
        result = asyncio.run(_with_throttle(apply))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.level is not None:
        print(f"threat level {result.level} until {_when(result.until)}")
    else:
        print(f"{args.subject}: limits x {args.multiplier} until {_when(result)}")
    return 0


def cmd_throttle_show(args: argparse.Namespace) -> int:
    async def show(store):  # type: ignore[no-untyped-def]
        return await store.threat(), await store.risks()

    threat, risks = asyncio.run(_with_throttle(show))
    if threat.level == "normal":
        print("threat level normal")
    else:
        by = f", by {threat.by}" if threat.by else ""
        print(f"threat level {threat.level} until {_when(threat.until)}{by}: {threat.reason}")
    for r in risks:
        print(
            f"subject {r.get('subject', '?')}: limits x {r.get('multiplier', '?')} until "
            f"{_when(int(r.get('until') or 0))}: {r.get('reason', '')}"
        )
    return 0


def cmd_throttle_clear(args: argparse.Namespace) -> int:
    async def clear(store):  # type: ignore[no-untyped-def]
        if args.subject:
            return await store.clear_risk(args.subject)
        return await store.clear_threat()

    done = asyncio.run(_with_throttle(clear))
    what = f"risk multiplier of {args.subject}" if args.subject else "threat level"
    print(f"{what} cleared" if done else f"no {what} was set")
    return 0


def _quarantine_target(args: argparse.Namespace) -> tuple[str, str]:
    for kind in ("subject", "device", "prefix"):
        value = getattr(args, kind)
        if value:
            return kind, value
    raise AssertionError("argparse requires one")


def cmd_quarantine_add(args: argparse.Namespace) -> int:
    kind, target = _quarantine_target(args)

    async def add(store):  # type: ignore[no-untyped-def]
        return await store.quarantine(kind, target, args.ttl, args.cause)

    try:
        normalised = asyncio.run(_with_throttle(add))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"quarantined {kind} {normalised} until {_when(int(time.time()) + args.ttl)}")
    return 0


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    async def list_all(store):  # type: ignore[no-untyped-def]
        return await store.quarantines()

    print(f"{'KIND':<9}{'TARGET':<46}{'BY':<6}{'UNTIL':<22}CAUSE")
    for q in asyncio.run(_with_throttle(list_all)):
        until = _when(int(q.get("until") or 0))
        print(
            f"{q.get('kind', '?'):<9}{q.get('target', '?'):<46}{q.get('by', ''):<6}{until:<22}"
            f"{q.get('cause', '')}"
        )
    return 0


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    kind, target = _quarantine_target(args)

    async def release(store):  # type: ignore[no-untyped-def]
        return await store.release(kind, target)

    try:
        released = asyncio.run(_with_throttle(release))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if not released:
        print(f"not quarantined: {kind} {target}", file=sys.stderr)
        return 1
    print(f"released {kind} {target} (every worker within EXTAUTHZ_OVERLIMIT_CACHE_MAX_AGE)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extauthz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the gRPC ext_authz service",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the ext_authz gRPC service. Configured only by settings: EXTAUTHZ_* "
        "environment variables, or a file of such lines named by EXTAUTHZ_CONFIG_FILE.",
        epilog="settings:\n" + describe_settings(),
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes sharing the port (SO_REUSEPORT); default EXTAUTHZ_WORKERS",
    )
    serve.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--subject", required=True)
    create.add_argument("--roles", type=_csv, required=True, help="comma-separated roles")
    create.add_argument("--projects", type=_csv, required=True, help="comma-separated projects")
    create.add_argument("--tier", default="standard", help="quota tier (see rego data)")
    create.add_argument(
        "--expires-in", type=parse_duration, default=0, help="e.g. 30d; default never"
    )
    create.add_argument(
        "--cidrs",
        type=_csv,
        default=(),
        help="client networks it may be used from, e.g. "
        "10.0.0.0/8,192.0.2.7/32 (checked against the address Envoy saw); default anywhere",
    )
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(func=cmd_keys_create)
    rotate = keys.add_parser(
        "rotate", help="a new key for the same principal; the old one ends after --overlap"
    )
    rotate.add_argument("key_id")
    rotate.add_argument("--overlap", type=parse_duration, default=86400, help="default 1d")
    rotate.add_argument(
        "--expires-in", type=parse_duration, default=0, help="the new key's; default never"
    )
    rotate.add_argument("--json", action="store_true", help="machine-readable output")
    rotate.set_defaults(func=cmd_keys_rotate)
    revoke = keys.add_parser("revoke", help="revoke a key by id (takes effect on the next request)")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=cmd_keys_revoke)
    keys.add_parser("list", help="list keys (never secrets)").set_defaults(func=cmd_keys_list)

    envoy = sub.add_parser("envoy", help="Envoy configuration").add_subparsers(
        dest="envoy_command", required=True
    )
    envoy.add_parser("render", help="print the Envoy config for the current settings").set_defaults(
        func=cmd_envoy_render
    )

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
    pexplain.add_argument("--roles", type=_csv, default=())
    pexplain.add_argument("--projects", type=_csv, default=())
    pexplain.add_argument("--tier", default="standard")
    pexplain.add_argument("--credential", default="api_key")
    pexplain.set_defaults(func=cmd_policy_explain)
    pdiff = policy.add_parser("diff", help="summary of shadow-mode disagreements")
    pdiff.add_argument("--log", help="shadow log (default: EXTAUTHZ_SHADOW_LOG)")
    pdiff.add_argument("--examples", action="store_true", help="print one input per pair")
    pdiff.set_defaults(func=cmd_policy_diff)

    dev = sub.add_parser("dev", help="the local stack").add_subparsers(
        dest="dev_command", required=True
    )
    dev.add_parser("up", help="start Redis, OPA, MLServer, extauthz, Envoy").set_defaults(
        func=cmd_dev_up
    )
    dev.add_parser("down", help="stop what `dev up` started").set_defaults(func=cmd_dev_down)
    dev.add_parser("status", help="which components run").set_defaults(func=cmd_dev_status)
    dev.add_parser(
        "demo", help="start the stack and show allowed and denied requests"
    ).set_defaults(func=cmd_dev_demo)
    token = dev.add_parser("token", help="mint an access token from the dev issuer (stdout)")
    token.add_argument("--subject", required=True)
    token.add_argument("--roles", type=_csv, default=(), help="comma-separated roles")
    token.add_argument("--projects", type=_csv, default=(), help="comma-separated projects")
    token.add_argument("--tier", default="standard")
    token.add_argument("--ttl", type=parse_duration, default=600, help="default 10m (max 15m)")
    token.add_argument(
        "--dpop-key", help="bind the token to this private JWK file (created if missing)"
    )
    token.set_defaults(func=cmd_dev_token)
    certs = dev.add_parser("certs", help="the dev CA, Envoy's certificate, client certificates")
    certs.add_argument("--client", help="issue a client certificate with this file name")
    certs.add_argument(
        "--uri", default="", help="its URI SAN, e.g. spiffe://extauthz.dev/ns/x/sa/y"
    )
    certs.add_argument("--dns", default="", help="its DNS SAN")
    certs.set_defaults(func=cmd_dev_certs)

    devices = sub.add_parser("devices", help="the DPoP device registry").add_subparsers(
        dest="devices_command", required=True
    )
    enroll = devices.add_parser("enroll", help="enroll a device key for a subject")
    enroll.add_argument("--subject", required=True)
    enroll.add_argument(
        "--jwk-file", required=True, help="the key (JWK; only its public part is kept)"
    )
    enroll.add_argument("--trust", required=True, choices=("registered", "managed", "attested"))
    enroll.add_argument("--expires-in", type=parse_duration, default=0, help="default never")
    enroll.set_defaults(func=cmd_devices_enroll)
    drevoke = devices.add_parser(
        "revoke", help="revoke a device (every enrollment, or --subject's)"
    )
    drevoke.add_argument("thumbprint")
    drevoke.add_argument("--subject")
    drevoke.set_defaults(func=cmd_devices_revoke)
    devices.add_parser("list", help="enrolled devices").set_defaults(func=cmd_devices_list)

    throttle = sub.add_parser(
        "throttle", help="adaptive throttling: threat level, per-subject risk multipliers"
    ).add_subparsers(dest="throttle_command", required=True)
    tset = throttle.add_parser(
        "set",
        help="--level L --ttl T: scale every limit by the policy's factor for L (per model "
        "sensitivity) until T; or --subject S --multiplier M --ttl T: S's own limits x M",
    )
    tset.add_argument("--level", choices=("normal", "elevated", "high", "critical"))
    tset.add_argument("--subject")
    tset.add_argument("--multiplier", type=float, help="e.g. 0.5: half the subject's limits")
    tset.add_argument("--ttl", type=parse_duration, required=True, help="e.g. 30m; it reverts")
    tset.add_argument("--reason", default="", help="recorded with it")
    tset.set_defaults(func=cmd_throttle_set)
    throttle.add_parser("show", help="the threat level and risk multipliers in force").set_defaults(
        func=cmd_throttle_show
    )
    tclear = throttle.add_parser("clear", help="back to normal now (or a subject's multiplier)")
    tclear.add_argument("--subject")
    tclear.set_defaults(func=cmd_throttle_clear)

    quarantine = sub.add_parser(
        "quarantine", help="quarantine subjects, devices or source networks (answered 429)"
    ).add_subparsers(dest="quarantine_command", required=True)
    for name, helptext in (
        ("add", "quarantine one subject, device (thumbprint) or source prefix"),
        ("release", "end a quarantine now"),
    ):
        q = quarantine.add_parser(name, help=helptext)
        target = q.add_mutually_exclusive_group(required=True)
        target.add_argument("--subject")
        target.add_argument("--device", help="a DPoP key thumbprint")
        target.add_argument(
            "--prefix", help="an address or prefix; the /24 (IPv6 /56) containing it"
        )
        if name == "add":
            q.add_argument("--ttl", type=parse_duration, default=3600, help="default 1h")
            q.add_argument("--cause", required=True, help="why (recorded, never sent to clients)")
            q.set_defaults(func=cmd_quarantine_add)
        else:
            q.set_defaults(func=cmd_quarantine_release)
    quarantine.add_parser("list", help="quarantines in force, with cause").set_defaults(
        func=cmd_quarantine_list
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
