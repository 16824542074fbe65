"""`extauthz audit`: verify the chains (central store or an export), export, search."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from extauthz.settings import Settings, load_settings


def _public_keys(settings: Settings, given: list[str]) -> dict[str, Any]:
    """kid → public key: --public-key files, else the setting, else <signing key file>.pub,
    else the public half of a configured signing key."""
    from extauthz.audit.chain import key_id, load_public_key
    from extauthz.wiring import audit_key_file, audit_signing_key

    files = given or [f for f in settings.audit_public_key_file.split(",") if f.strip()]
    if not files:
        pub = audit_key_file(settings).with_name(audit_key_file(settings).name + ".pub")
        if pub.exists():
            files = [str(pub)]
    keys = []
    for name in files:
        text = Path(name.strip()).read_text()
        blocks = re.findall(r"-----BEGIN PUBLIC KEY-----.*?-----END PUBLIC KEY-----", text, re.S)
        keys.extend(load_public_key(block) for block in blocks or text.split())
    if not keys and settings.audit_signing_key.get_secret_value():
        keys.append(audit_signing_key(settings, create=False).public_key())
    return {key_id(k): k for k in keys}


def _no_keys() -> int:
    print("no public key to check signatures with (--public-key)", file=sys.stderr)
    return 2


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from extauthz.audit.sink import sync_redis_client

    return sync_redis_client(settings, 10.0)


def _print_report(report: Any, source: str, seconds: float) -> int:
    rate = report.records / seconds if seconds > 0 else 0.0
    for writer, st in sorted(report.writers.items()):
        since = f" (from seq {st.anchored + 1}: 1..{st.anchored} archived)" if st.anchored else ""
        print(
            f"  {writer}: {st.records} records through seq {st.seq}{since}, {st.checkpoints} "
            f"checkpoints, signed through seq {st.signed_seq}"
        )
    print(f"{source}: {report.records} records in {seconds:.3f} s ({rate:,.0f} records/s)")
    if report.problem is not None:
        print(f"FAILED {report.problem}")
        return 1
    print("OK: every link, sequence and signature checks")
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from extauthz.audit.verify import read_file, verify_lines, verify_store

    settings = load_settings()
    keys = _public_keys(settings, args.public_key)
    if not keys:
        return _no_keys()
    started = time.perf_counter()
    if args.file:
        lines = read_file(Path(args.file))
        started = time.perf_counter()  # the check, not the read
        report = verify_lines(lines, keys, allow_unsigned_tail=args.allow_unsigned_tail)
        return _print_report(report, args.file, time.perf_counter() - started)
    redis = _store(settings)
    try:
        archive = Path(args.archive) if args.archive else None
        report = verify_store(redis, keys, allow_unsigned_tail=not args.strict, archive_dir=archive)
    finally:
        redis.close()
    return _print_report(report, "central store", time.perf_counter() - started)


def cmd_audit_export(args: argparse.Namespace) -> int:
    from extauthz.audit.verify import export

    settings = load_settings()
    redis = _store(settings)
    try:
        with open(args.out, "wb") as out:
            counts = export(redis, out, include_unsigned=args.include_unsigned)
    finally:
        redis.close()
    for writer, n in sorted(counts.items()):
        print(f"  {writer}: {n} records")
    print(f"exported {sum(counts.values())} records to {args.out}")
    return 0


def cmd_audit_search(args: argparse.Namespace) -> int:
    from extauthz.audit.verify import lines_matching, search

    settings = load_settings()
    redis = _store(settings)
    try:
        archive = Path(args.archive) if args.archive else None
        found = list(search(redis, args.request_id, archive, args.since, args.until))
    finally:
        redis.close()
    if not found:
        print(f"no decision with request id {args.request_id}", file=sys.stderr)
        return 1
    logs = settings.run_dir / "logs"
    access_log = Path(args.access_log) if args.access_log else logs / "envoy-access.log"
    opa_log = Path(args.opa_log) if args.opa_log else logs / "opa.log"
    needle = json.dumps(args.request_id)
    for record in found:
        opa_id = record.get("opa_decision_id")
        print(
            json.dumps(
                {
                    "audit": record,
                    "opa_decision_id": opa_id,
                    "opa_decision_log": lines_matching(opa_log, [opa_id]) if opa_id else [],
                    "envoy_access_log": lines_matching(access_log, [f'"request_id":{needle}']),
                },
                indent=2,
            )
        )
    return 0


def cmd_audit_archive(args: argparse.Namespace) -> int:
    from extauthz.audit.archive import ArchiveRefused, archive_writer
    from extauthz.audit.sink import writers
    from extauthz.cli.common import NOT_AUDITED, audit_action
    from extauthz.wiring import audit_archive_dir

    settings = load_settings()
    keys = _public_keys(settings, args.public_key)
    if not keys:
        return _no_keys()
    out_dir = Path(args.out_dir) if args.out_dir else audit_archive_dir(settings)
    older = settings.audit_keep_seconds if args.older_than is None else args.older_than
    failed, audited = 0, True
    while True:
        redis = _store(settings)
        try:
            for writer in writers(redis):
                try:
                    done = archive_writer(redis, writer, out_dir, keys, older, args.max_records)
                except ArchiveRefused as exc:
                    print(f"REFUSED {exc}", file=sys.stderr)
                    failed += 1
                    continue
                if done is None:
                    continue
                print(
                    f"  {writer}: seq {done.first_seq}..{done.last_seq} ({done.records} records) "
                    f"-> {done.path}"
                )
                audited &= audit_action(
                    "audit.archive", writer, "ok",
                    {"first_seq": done.first_seq, "last_seq": done.last_seq,
                     "records": done.records, "file": done.path.name, "sha256": done.sha256},
                )  # fmt: skip
        finally:
            redis.close()
        if not args.every:
            return 1 if failed else (0 if audited else NOT_AUDITED)
        time.sleep(args.every)


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser(
        "audit", help="the audit trail: verify chains and signatures, export, search"
    ).add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser(
        "verify",
        help="check every link, sequence and checkpoint signature (central store, or --file); "
        "exits 1 naming the first bad record",
    )
    verify.add_argument("--file", help="an export (JSON lines) instead of the central store")
    verify.add_argument(
        "--archive",
        metavar="DIR",
        help="(store) check every chain from its first record: the archive files in DIR "
        "(`audit archive`), then the store",
    )
    verify.add_argument(
        "--public-key",
        action="append",
        default=[],
        help="trusted public key file (hex or PEM); default EXTAUTHZ_AUDIT_PUBLIC_KEY_FILE, "
        "else the .pub beside the signing key",
    )
    verify.add_argument(
        "--allow-unsigned-tail",
        action="store_true",
        help="(--file) accept records after the last checkpoint",
    )
    verify.add_argument(
        "--strict",
        action="store_true",
        help="(store) also fail on records live writers have not signed yet",
    )
    verify.set_defaults(func=cmd_audit_verify)
    exp = audit.add_parser("export", help="write the central store's records as JSON lines")
    exp.add_argument("--out", required=True)
    exp.add_argument(
        "--include-unsigned",
        action="store_true",
        help="also the records after each chain's last checkpoint",
    )
    exp.set_defaults(func=cmd_audit_export)
    srch = audit.add_parser(
        "search", help="one decision by request id, with OPA's decision and Envoy's log line"
    )
    srch.add_argument("--request-id", required=True)
    srch.add_argument("--access-log", help="Envoy access log (default <run_dir>/logs/...)")
    srch.add_argument("--opa-log", help="OPA's decision log (default <run_dir>/logs/opa.log)")
    srch.add_argument("--archive", metavar="DIR", help="also search the archive files in DIR")
    srch.add_argument(
        "--since",
        type=float,
        metavar="EPOCH",
        help="read each stream only from this time on (binary search: no full scan); e.g. the "
        "access log's start_time minus a minute",
    )
    srch.add_argument("--until", type=float, metavar="EPOCH", help="and only up to this time")
    srch.set_defaults(func=cmd_audit_search)
    arch = audit.add_parser(
        "archive",
        help="move each chain's oldest records out of the central store into archive files "
        "(verified first; an anchor stays behind); run it from cron, or with --every",
    )
    arch.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="SECONDS",
        help="archive records older than this (default EXTAUTHZ_AUDIT_KEEP_SECONDS)",
    )
    arch.add_argument("--out-dir", help="default EXTAUTHZ_AUDIT_ARCHIVE_DIR")
    arch.add_argument(
        "--max-records", type=int, default=1_000_000, help="at most about this many per writer"
    )
    arch.add_argument("--public-key", action="append", default=[], help="as for verify")
    arch.add_argument(
        "--every", type=float, default=0.0, metavar="SECONDS", help="run again every N seconds"
    )
    arch.set_defaults(func=cmd_audit_archive)
