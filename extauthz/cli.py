"""extauthz command line: serve, keys, envoy, dev (stack up/down/status/demo)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time

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
    from extauthz.server import serve

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    asyncio.run(serve(settings))
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


def cmd_keys_create(args: argparse.Namespace) -> int:
    async def create(store):  # type: ignore[no-untyped-def]
        return await store.create(
            args.subject, args.roles, args.projects, args.tier, args.expires_in
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
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(func=cmd_keys_create)
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
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args))
