"""`extauthz keys`: create, rotate, revoke and list API keys (a secret is printed once)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from extauthz.cli.common import NOT_AUDITED, audit_action, csv, parse_duration, when, with_redis

_WIDTHS = (14, 16, 20, 18, 10, 9)


def _with_store(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from extauthz.authn.apikeys import KeyStore
    from extauthz.wiring import key_pepper

    return with_redis(lambda redis, settings: fn(KeyStore(redis, key_pepper(settings))))


def cmd_keys_create(args: argparse.Namespace) -> int:
    record, key = _with_store(
        lambda store: store.create(
            args.subject, args.roles, args.projects, args.tier, args.expires_in, args.cidrs
        )
    )
    details = {
        "subject": record.subject,
        "roles": list(record.roles),
        "projects": list(record.projects),
        "tier": record.tier,
        "expires": record.expires,
        "cidrs": list(args.cidrs),
    }
    audited = audit_action("keys.create", record.key_id, "ok", details)
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
        print(f"expires: {when(record.expires)}")
        print(f"key:     {key}")
        print("This key is shown once; only its keyed hash is stored.", file=sys.stderr)
    return 0 if audited else NOT_AUDITED


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    rotated = _with_store(lambda store: store.rotate(args.key_id, args.overlap, args.expires_in))
    if rotated is None:
        audit_action("keys.rotate", args.key_id, "not_found", {})
        print(f"no active key: {args.key_id}", file=sys.stderr)
        return 1
    old, new, key = rotated
    details = {"new_key_id": new.key_id, "old_expires": old.expires, "expires": new.expires}
    if not audit_action("keys.rotate", old.key_id, "ok", details):
        print(f"new key id: {new.key_id}\nkey:        {key}")
        return NOT_AUDITED
    if args.json:
        print(json.dumps({"key_id": new.key_id, "key": key, "old_expires": old.expires}))
        return 0
    print(f"new key id: {new.key_id}  (old key {old.key_id} valid until {when(old.expires)})")
    print(f"key:        {key}")
    print("This key is shown once; only its keyed hash is stored.", file=sys.stderr)
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    revoked = _with_store(lambda store: store.revoke(args.key_id))
    audited = audit_action("keys.revoke", args.key_id, "ok" if revoked else "not_found", {})
    if revoked:
        print(f"revoked {args.key_id}")
        return 0 if audited else NOT_AUDITED
    print(f"no such key: {args.key_id}", file=sys.stderr)
    return 1


def cmd_keys_list(args: argparse.Namespace) -> int:
    records = _with_store(lambda store: store.list())
    header = ("KEY ID", "SUBJECT", "ROLES", "PROJECTS", "TIER", "STATUS")
    print("".join(f"{h:<{w}}" for h, w in zip(header, _WIDTHS, strict=True)) + "EXPIRES")
    for r in records:
        status = r.status if not (r.expires and r.expires <= time.time()) else "expired"
        row = (r.key_id, r.subject, ",".join(r.roles), ",".join(r.projects), r.tier, status)
        print("".join(f"{c:<{w}}" for c, w in zip(row, _WIDTHS, strict=True)) + when(r.expires))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="create a key (printed once)")
    create.add_argument("--subject", required=True)
    create.add_argument("--roles", type=csv, required=True, help="comma-separated roles")
    create.add_argument("--projects", type=csv, required=True, help="comma-separated projects")
    create.add_argument("--tier", default="standard", help="quota tier (see rego data)")
    create.add_argument(
        "--expires-in", type=parse_duration, default=0, help="e.g. 30d; default never"
    )
    create.add_argument(
        "--cidrs",
        type=csv,
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
