"""`extauthz analytics`: run a worker, register a model's reference sample, show and clear."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from extauthz.cli.common import when, with_redis


def cmd_run(args: argparse.Namespace) -> int:
    from extauthz.analytics.actions import ActionLog, ActionStore
    from extauthz.analytics.worker import Worker
    from extauthz.metrics import serve_metrics
    from extauthz.settings import load_settings
    from extauthz.wiring import redis_client

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.metrics_port:
        serve_metrics(args.metrics_port, settings.host)

    async def main() -> None:
        redis = redis_client(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = Worker(
            redis,
            settings.opa_url,
            ActionStore(redis, ActionLog(settings.decision_log)),
            shards=settings.analytics_shards,
            lease=settings.analytics_lease,
            rows_per_event=settings.analytics_rows_per_event,
            tenants=settings.analytics_tenants,
        )
        try:
            await worker.run(stop)
        finally:
            await redis.aclose()

    asyncio.run(main())
    return 0


def _sample(path: Path, part: str) -> tuple[list[list[float]], list[int] | None]:
    doc = json.loads(path.read_text())
    if part:
        doc = doc[part]
    return doc["rows"], doc.get("labels")


def cmd_register(args: argparse.Namespace) -> int:
    from extauthz.analytics.profile import build_profile
    from extauthz.store.schema import analytics_profile_key as profile_key

    try:
        rows, labels = _sample(args.sample, args.part)
        profile = build_profile(args.model, rows, labels)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        print(f"cannot build a profile: {exc}", file=sys.stderr)
        return 2

    async def store(redis: Any, _settings: Any) -> None:
        await redis.set(profile_key(args.model), profile.to_json())

    with_redis(store)
    print(
        f"{args.model}: profile of {profile.sample_size} rows x {profile.features} features "
        f"({len(profile.points)} reference points, labels {'yes' if profile.labels else 'no'})"
    )
    return 0


def _store(redis: Any, settings: Any) -> Any:
    from extauthz.analytics.actions import ActionLog, ActionStore

    return ActionStore(redis, ActionLog(settings.decision_log))


def cmd_show(args: argparse.Namespace) -> int:
    async def show(redis: Any, settings: Any) -> dict[str, Any]:
        return await _store(redis, settings).show(args.subject)

    found = with_redis(show)
    if args.json:
        print(json.dumps(found, indent=2, sort_keys=True))
        return 0
    print(f"subject {args.subject}")
    for model, entry in sorted(found["models"].items()):
        scores = " ".join(f"{k}={v}" for k, v in sorted(entry["scores"].items()))
        print(f"  {model}: {scores} (at {when(entry['ts'])})")
        print(f"    evidence {json.dumps(entry['evidence'], sort_keys=True)}")
    risk = found["risk"]
    if risk:
        print(
            f"  in force: limits x {risk.get('multiplier')} degrade {risk.get('degrade', 0)} "
            f"until {when(int(risk.get('until') or 0))} ({risk.get('reason', '')})"
        )
    if found["quarantine"]:
        q = found["quarantine"]
        until = when(int(q.get("until") or 0))
        print(f"  quarantined until {until} by {q.get('by')}: {q.get('cause')}")
    for action in found["actions"]:
        print(
            f"  action at {when(action['ts'])}: level {action['level']} risk {action['risk']} "
            f"degrade {action['degrade']} quarantine {action['quarantine']}s over "
            f"{','.join(action['over'])}"
        )
    if not (found["models"] or risk or found["actions"]):
        print("  nothing recorded")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    async def clear(redis: Any, settings: Any) -> dict[str, Any]:
        return await _store(redis, settings).clear(args.subject)

    removed = with_redis(clear)
    print(f"{args.subject}: cleared " + ", ".join(k for k, v in removed.items() if v) or "nothing")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    analytics = sub.add_parser(
        "analytics", help="behavioural analytics: worker, reference samples, tenant scores"
    ).add_subparsers(dest="analytics_command", required=True)
    run = analytics.add_parser("run", help="run an analytics worker (several may run)")
    run.add_argument("--metrics-port", type=int, default=0, help="Prometheus port; 0: none")
    run.set_defaults(func=cmd_run)
    reg = analytics.add_parser(
        "register", help="build a model's reference profile from a sample of expected inputs"
    )
    reg.add_argument("--model", required=True)
    reg.add_argument(
        "--sample", required=True, type=Path, help='JSON {"rows": [[...]], "labels": [...]}'
    )
    reg.add_argument("--part", default="", help="a member of the file holding that object")
    reg.set_defaults(func=cmd_register)
    show = analytics.add_parser("show", help="a subject's scores, evidence and actions")
    show.add_argument("--subject", required=True)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    clear = analytics.add_parser("clear", help="undo a subject's responses, restart its scores")
    clear.add_argument("--subject", required=True)
    clear.set_defaults(func=cmd_clear)
