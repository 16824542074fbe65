"""`extauthz devices`: the DPoP device registry (enroll, revoke, list)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from extauthz.cli.common import NOT_AUDITED, audit_action, parse_duration, when, with_redis


def _with_devices(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from extauthz.authn.devices import DeviceStore

    return with_redis(lambda redis, _settings: fn(DeviceStore(redis)))


def cmd_devices_enroll(args: argparse.Namespace) -> int:
    try:
        jwk = json.loads(Path(args.jwk_file).read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read a JWK from {args.jwk_file}: {exc}", file=sys.stderr)
        return 1
    try:
        record = _with_devices(
            lambda store: store.enroll(args.subject, jwk, args.trust, args.expires_in)
        )
    except ValueError as exc:
        audit_action("devices.enroll", args.subject, "refused", {"trust": args.trust})
        print(f"not enrolled: {exc}", file=sys.stderr)
        return 1
    details = {"subject": record.subject, "trust": record.trust, "expires": record.expires}
    audited = audit_action("devices.enroll", record.thumbprint, "ok", details)
    print(
        f"enrolled {record.thumbprint} for {record.subject}: trust {record.trust}, "
        f"expires {when(record.expires)}"
    )
    return 0 if audited else NOT_AUDITED


def cmd_devices_revoke(args: argparse.Namespace) -> int:
    count = _with_devices(lambda store: store.revoke(args.thumbprint, args.subject))
    details = {"subject": args.subject, "enrollments": count}
    audited = audit_action(
        "devices.revoke", args.thumbprint, "ok" if count else "not_found", details
    )
    if not count:
        print(f"no such device: {args.thumbprint}", file=sys.stderr)
        return 1
    print(f"revoked {args.thumbprint} ({count} enrollment{'s' if count > 1 else ''})")
    return 0 if audited else NOT_AUDITED


def cmd_devices_list(args: argparse.Namespace) -> int:
    print(f"{'THUMBPRINT':<45}{'SUBJECT':<16}{'TRUST':<12}{'STATUS':<9}EXPIRES")
    for r in _with_devices(lambda store: store.list()):
        status = "expired" if r.expired(time.time()) and r.status == "active" else r.status
        print(f"{r.thumbprint:<45}{r.subject:<16}{r.trust:<12}{status:<9}{when(r.expires)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
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
