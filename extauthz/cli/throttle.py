"""`extauthz throttle` (threat level, risk multipliers) and `extauthz quarantine`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from extauthz.cli.common import NOT_AUDITED, audit_action, parse_duration, when, with_redis
from extauthz.store.schema import RiskFields


def _with_throttle(fn: Callable[[Any], Awaitable[Any]]) -> Any:
    from extauthz.limits.throttle import ThrottleStore

    return with_redis(
        lambda redis, s: fn(ThrottleStore(redis, s.source_prefix_v4, s.source_prefix_v6))
    )


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
        result = _with_throttle(apply)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.level is not None:
        audited = audit_action(
            "throttle.threat",
            args.level,
            "ok",
            {"level": result.level, "until": result.until, "reason": args.reason},
        )
        print(f"threat level {result.level} until {when(result.until)}")
    else:
        audited = audit_action(
            "throttle.risk",
            args.subject,
            "ok",
            {"multiplier": args.multiplier, "until": result, "reason": args.reason},
        )
        print(f"{args.subject}: limits x {args.multiplier} until {when(result)}")
    return 0 if audited else NOT_AUDITED


def cmd_throttle_show(args: argparse.Namespace) -> int:
    async def show(store):  # type: ignore[no-untyped-def]
        return await store.threat(), await store.risks()

    threat, risks = _with_throttle(show)
    if threat.level == "normal":
        print("threat level normal")
    else:
        by = f", by {threat.by}" if threat.by else ""
        print(f"threat level {threat.level} until {when(threat.until)}{by}: {threat.reason}")
    for r in risks:
        if "multiplier" in r:
            print(
                f"subject {r.get('subject', '?')}: limits x {r.get('multiplier', '?')} until "
                f"{when(int(r.get('until') or 0))}: {r.get('reason', '')}"
            )
        level = r.get(RiskFields.DEGRADE, "0")
        if level != "0":
            print(
                f"subject {r.get(RiskFields.SUBJECT, '?')}: answers degraded to level {level} "
                f"({DEGRADE_NAMES.get(level, '?')}) until "
                f"{when(int(r.get(RiskFields.DEGRADE_UNTIL) or r.get(RiskFields.UNTIL) or 0))}: "
                f"{r.get(RiskFields.DEGRADE_REASON) or r.get(RiskFields.REASON, '')}"
            )
    return 0


DEGRADE_NAMES = {"1": "scores rounded", "2": "top-1 class", "3": "labels only"}


def cmd_throttle_degrade(args: argparse.Namespace) -> int:
    try:
        until = _with_throttle(
            lambda store: store.set_degrade(args.subject, args.level, args.ttl, args.reason)
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.level == 0:
        print(f"{args.subject}: answers no longer degraded")
    else:
        name = DEGRADE_NAMES[str(args.level)]
        print(
            f"{args.subject}: answers degraded to level {args.level} ({name}) until {when(until)}"
        )
    return 0


def cmd_throttle_clear(args: argparse.Namespace) -> int:
    done = _with_throttle(
        lambda store: store.clear_risk(args.subject) if args.subject else store.clear_threat()
    )
    what = f"risk multiplier of {args.subject}" if args.subject else "threat level"
    action = "throttle.risk_clear" if args.subject else "throttle.threat_clear"
    audited = audit_action(action, args.subject or "threat", "ok" if done else "not_set", {})
    print(f"{what} cleared" if done else f"no {what} was set")
    return 0 if audited else NOT_AUDITED


def _quarantine_target(args: argparse.Namespace) -> tuple[str, str]:
    for kind in ("subject", "device", "prefix"):
        value = getattr(args, kind)
        if value:
            return kind, value
    raise AssertionError("argparse requires one")


def cmd_quarantine_add(args: argparse.Namespace) -> int:
    kind, target = _quarantine_target(args)
    try:
        normalised = _with_throttle(
            lambda store: store.quarantine(kind, target, args.ttl, args.cause)
        )
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    details = {"kind": kind, "ttl": args.ttl, "cause": args.cause}
    audited = audit_action("quarantine.add", f"{kind}:{normalised}", "ok", details)
    print(f"quarantined {kind} {normalised} until {when(int(time.time()) + args.ttl)}")
    return 0 if audited else NOT_AUDITED


def cmd_quarantine_list(args: argparse.Namespace) -> int:
    print(f"{'KIND':<9}{'TARGET':<46}{'BY':<6}{'UNTIL':<22}CAUSE")
    for q in _with_throttle(lambda store: store.quarantines()):
        until = when(int(q.get("until") or 0))
        print(
            f"{q.get('kind', '?'):<9}{q.get('target', '?'):<46}{q.get('by', ''):<6}{until:<22}"
            f"{q.get('cause', '')}"
        )
    return 0


def cmd_quarantine_release(args: argparse.Namespace) -> int:
    kind, target = _quarantine_target(args)
    try:
        released = _with_throttle(lambda store: store.release(kind, target))
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    outcome = "ok" if released else "not_found"
    audited = audit_action("quarantine.release", f"{kind}:{target}", outcome, {"kind": kind})
    if not released:
        print(f"not quarantined: {kind} {target}", file=sys.stderr)
        return 1
    print(f"released {kind} {target} (every worker within EXTAUTHZ_OVERLIMIT_CACHE_MAX_AGE)")
    return 0 if audited else NOT_AUDITED


def register(sub: argparse._SubParsersAction) -> None:
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
    tdeg = throttle.add_parser(
        "degrade",
        help="--subject S --level N --ttl T: degrade S's answers (1 scores rounded to 2 "
        "decimals, 2 top-1 class, 3 labels only; 0 clears); the policy's plan still applies "
        "and the stricter wins",
    )
    tdeg.add_argument("--subject", required=True)
    tdeg.add_argument("--level", type=int, required=True, choices=(0, 1, 2, 3))
    tdeg.add_argument("--ttl", type=parse_duration, default=3600, help="default 1h; it reverts")
    tdeg.add_argument("--reason", default="", help="recorded with it")
    tdeg.set_defaults(func=cmd_throttle_degrade)
    tclear = throttle.add_parser("clear", help="back to normal now (or a subject's multiplier)")
    tclear.add_argument("--subject")
    tclear.set_defaults(func=cmd_throttle_clear)


def register_quarantine(sub: argparse._SubParsersAction) -> None:
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
