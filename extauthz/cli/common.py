"""What every command group shares: argument types, time formatting, "connect to Redis and run"."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from extauthz.settings import Settings, load_settings

if TYPE_CHECKING:
    import redis.asyncio as aioredis

T = TypeVar("T")

_DURATION = re.compile(r"^(\d+)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> int:
    """'30d' → seconds. Units: s, m, h, d, w (none: seconds)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 15m, 12h, 30d)")
    return int(match[1]) * _UNITS[match[2]]


def when(epoch: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch)) if epoch else "never"


def csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def with_redis(fn: Callable[[aioredis.Redis, Settings], Awaitable[T]]) -> T:
    """Connect to the configured Redis, run `fn(redis, settings)`, close; its result."""

    async def run() -> T:
        from extauthz.wiring import redis_client  # the service's own client and timeouts

        settings = load_settings()
        redis = redis_client(settings)
        try:
            return await fn(redis, settings)
        finally:
            await redis.aclose()

    return asyncio.run(run())


# exit status of an operator command whose action was done but could not be audited
NOT_AUDITED = 3


def audit_action(action: str, target: str, outcome: str, details: dict[str, Any]) -> bool:
    """Append an operator action (who, what, when, outcome) to the audit trail's `ops` chain.
    False, said on stderr, if it could not be recorded. Never pass a secret in `details`."""

    async def append(redis: aioredis.Redis, settings: Settings) -> int | None:
        if not settings.audit_enabled:
            return None
        from extauthz.audit.operator import actor, append_operator_action, operator_record
        from extauthz.wiring import audit_signing_key

        record = operator_record(action, target, outcome, details, actor(settings.audit_actor))
        return await append_operator_action(redis, audit_signing_key(settings), record)

    try:
        with_redis(append)
    except Exception as exc:  # the action stands; the operator must know it is not audited
        print(f"audit: {action} {target} was NOT recorded ({exc})", file=sys.stderr)
        return False
    return True
