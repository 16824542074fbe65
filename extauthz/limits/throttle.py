"""Adaptive throttling and quarantine: the state operators (and automatic rules) set in Redis.

- Threat level (`ea:threat`): normal | elevated | high | critical, with a TTL. Every worker
  polls it off the request path; limits are multiplied by the policy's factor for the level
  and the model's sensitivity (`quota_context.throttle`). Expires back to normal.
- Risk multiplier of a subject (`ea:{sub:<h>}:risk`, field `multiplier`, with a TTL): its own
  windows' limits are multiplied by it inside the decision's Lua call.
- Quarantine of a subject, device or source prefix (`ea:{<tag>}:quarantine`, with a TTL and a
  recorded cause): checked inside the decision's Lua call; answered 429.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from extauthz.clock import Clock, system_clock
from extauthz.limits.keys import (
    THREAT_KEY,
    device_tag,
    prefix_tag,
    quarantine_key,
    risk_key,
    source_prefix,
    subject_tag,
)
from extauthz.metrics import THREAT_LEVEL
from extauthz.periodic import Periodic

log = logging.getLogger(__name__)

LEVELS = ("normal", "elevated", "high", "critical")
KINDS = ("subject", "device", "prefix")


def _text(raw: dict[Any, Any]) -> dict[str, str]:
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


@dataclass(frozen=True, slots=True)
class Threat:
    level: str = "normal"
    reason: str = ""
    by: str = ""
    until: int = 0  # epoch s; 0 when normal


class DenialRate:
    """This worker's share of denied decisions (401/403/429) over a window: the signal that
    raises the threat level automatically. Counting costs two integer additions a decision;
    it is read only by the threat watcher, off the request path."""

    def __init__(self, window: float, min_decisions: int, clock: Clock = system_clock) -> None:
        self._window = window
        self._min = min_decisions
        self._clock = clock
        self._started = clock()
        self.total = 0
        self.denied = 0

    def record(self, status: int) -> None:
        self.total += 1
        if status in (401, 403, 429):
            self.denied += 1

    def take(self) -> tuple[float, int] | None:
        """(denied share, decisions) once a window has passed with enough decisions; resets."""
        now = self._clock()
        if now - self._started < self._window:
            return None
        total, denied = self.total, self.denied
        self._started, self.total, self.denied = now, 0, 0
        if total < self._min:
            return None
        return denied / total, total


@dataclass(frozen=True, slots=True)
class AutoThreat:
    """Raise the threat level to `level` for `ttl` seconds when at least `ratio` of a worker's
    decisions in a window were denials (a flood of probing or stuffing). Never lowers a level."""

    rate: DenialRate
    store: ThrottleStore
    ratio: float
    level: str
    ttl: int


class ThreatWatcher(Periodic):
    """The current threat level, polled from Redis every `interval` seconds (never on the
    request path). Redis unreachable: the last level read stays until its own `until`.
    With `auto`, the same poll raises the level when this worker's denial rate is high."""

    _task_name = "threat-level"

    def __init__(
        self,
        redis: Any,
        interval: float = 1.0,
        clock: Clock = system_clock,
        auto: AutoThreat | None = None,
    ) -> None:
        self._redis = redis
        self._interval = interval
        self._clock = clock
        self._threat = Threat()
        self.auto = auto

    def record(self, status: int) -> None:
        if self.auto is not None:
            self.auto.rate.record(status)

    @property
    def level(self) -> str:
        threat = self._threat
        if threat.until and threat.until <= self._clock():
            return "normal"
        return threat.level

    async def poll_once(self) -> Threat:
        try:
            raw = await self._redis.hgetall(THREAT_KEY)
        except (RedisError, OSError, TimeoutError) as exc:
            log.debug("threat level poll failed: %s", exc)
            return self._threat
        threat = parse_threat(_text(raw))
        if threat.level != self._threat.level:
            log.warning(
                "threat level %s -> %s (%s)", self._threat.level, threat.level, threat.reason
            )
        self._threat = threat
        THREAT_LEVEL.set(LEVELS.index(threat.level))
        if self.auto is not None:
            await self._raise_if_flooded(self.auto)
        return self._threat

    async def _raise_if_flooded(self, auto: AutoThreat) -> None:
        taken = auto.rate.take()
        if taken is None:
            return
        share, total = taken
        if share < auto.ratio or LEVELS.index(self.level) >= LEVELS.index(auto.level):
            return
        reason = f"{share:.0%} of {total} decisions denied"
        try:
            self._threat = await auto.store.set_threat(auto.level, auto.ttl, reason, by="auto")
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not raise the threat level: %s", exc)
            return
        THREAT_LEVEL.set(LEVELS.index(auto.level))
        log.warning("threat level raised to %s automatically: %s", auto.level, reason)


def parse_threat(fields: dict[str, str]) -> Threat:
    level = fields.get("level", "normal")
    if level not in LEVELS:
        level = "normal"
    return Threat(
        level, fields.get("reason", ""), fields.get("by", ""), int(fields.get("until") or 0)
    )


def parse_factors(text: str) -> dict[str, float]:
    """'elevated=0.5,high=0.25' → {"elevated": 0.5, "high": 0.25}; ValueError if malformed."""
    factors: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        level, _, value = part.partition("=")
        level = level.strip()
        if level not in LEVELS or not 0 < float(value) <= 1:
            raise ValueError(f"bad threat factor {part!r} (level=factor, 0 < factor <= 1)")
        factors[level] = float(value)
    return factors


def prefix_of(text: str, v4_bits: int, v6_bits: int) -> str:
    """An address or a prefix as the operator typed it → the limiter's prefix containing it.
    ValueError if it is neither, or a network wider than the limiter's prefixes."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    bits = v4_bits if network.version == 4 else v6_bits
    if network.prefixlen < bits:
        raise ValueError(f"{text}: wider than the /{bits} prefixes the limiter counts per")
    return source_prefix(str(network.network_address), v4_bits, v6_bits)


class ThrottleStore:
    """What the CLI (and automatic rules) read and write. Every key carries a TTL."""

    def __init__(
        self, redis: Any, v4_bits: int = 24, v6_bits: int = 56, clock: Clock = system_clock
    ) -> None:
        self._redis = redis
        self._v4 = v4_bits
        self._v6 = v6_bits
        self._clock = clock

    # --- threat level
    async def set_threat(self, level: str, ttl: int, reason: str = "", by: str = "cli") -> Threat:
        if level not in LEVELS:
            raise ValueError(f"level must be one of {', '.join(LEVELS)}")
        if level == "normal":
            await self._redis.delete(THREAT_KEY)
            return Threat()
        until = int(self._clock()) + ttl
        threat = Threat(level, reason, by, until)
        await self._redis.hset(
            THREAT_KEY, mapping={"level": level, "reason": reason, "by": by, "until": str(until)}
        )
        await self._redis.expire(THREAT_KEY, ttl)
        return threat

    async def threat(self) -> Threat:
        return parse_threat(_text(await self._redis.hgetall(THREAT_KEY)))

    async def clear_threat(self) -> bool:
        return bool(await self._redis.delete(THREAT_KEY))

    # --- per-subject risk multipliers
    async def set_risk(self, subject: str, multiplier: float, ttl: int, reason: str = "") -> int:
        if not 0 < multiplier <= 10:
            raise ValueError("a multiplier is > 0 and <= 10")
        until = int(self._clock()) + ttl
        key = risk_key(subject)
        await self._redis.hset(
            key,
            mapping={
                "multiplier": repr(multiplier),
                "subject": subject,
                "reason": reason,
                "until": str(until),
            },
        )
        await self._redis.expire(key, ttl)
        return until

    async def clear_risk(self, subject: str) -> bool:
        return bool(await self._redis.delete(risk_key(subject)))

    async def risks(self) -> list[dict[str, str]]:
        return await self._scan("ea:{sub:*}:risk")

    # --- quarantine
    def quarantine_key(self, kind: str, target: str) -> tuple[str, str]:
        """(Redis key, normalised target) of a quarantine of `kind`."""
        if kind == "subject":
            return quarantine_key(subject_tag(target)), target
        if kind == "device":
            return quarantine_key(device_tag(target)), target
        if kind == "prefix":
            prefix = prefix_of(target, self._v4, self._v6)
            return quarantine_key(prefix_tag(prefix)), prefix
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")

    async def quarantine(
        self, kind: str, target: str, ttl: int, cause: str, by: str = "cli"
    ) -> str:
        key, target = self.quarantine_key(kind, target)
        now = int(self._clock())
        await self._redis.hset(
            key,
            mapping={
                "kind": kind,
                "target": target,
                "cause": cause,
                "by": by,
                "set_at": str(now),
                "until": str(now + ttl),
            },
        )
        await self._redis.expire(key, ttl)
        return target

    async def release(self, kind: str, target: str) -> bool:
        key, _ = self.quarantine_key(kind, target)
        return bool(await self._redis.delete(key))

    async def quarantines(self) -> list[dict[str, str]]:
        return await self._scan("ea:{*}:quarantine")

    async def _scan(self, pattern: str) -> list[dict[str, str]]:
        found = []
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            fields = _text(await self._redis.hgetall(key))
            if fields:
                found.append(fields)
        return sorted(
            found, key=lambda f: (f.get("kind", ""), f.get("target", f.get("subject", "")))
        )
