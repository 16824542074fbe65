"""Adaptive throttling and quarantine: the state operators (and automatic rules) write in Redis
(the CLI-facing store; the workers read the threat level through threat.ThreatWatcher).

- Threat level (`ea:threat`, see threat.py).
- Risk multiplier of a subject (`ea:{sub:<h>}:risk`, field `multiplier`, with a TTL): its own
  windows' limits are multiplied by it inside the decision's Lua call.
- Quarantine of a subject, device or source prefix (`ea:{<tag>}:quarantine`, with a TTL and a
  recorded cause): checked inside the decision's Lua call; answered 429.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from extauthz.clock import Clock, system_clock
from extauthz.store.schema import (
    QUARANTINE_PATTERN,
    RISK_PATTERN,
    THREAT_KEY,
    QuarantineFields,
    RiskFields,
    ThreatFields,
    decode_hash,
    device_tag,
    prefix_tag,
    quarantine_key,
    risk_key,
    source_prefix,
    subject_tag,
)
from extauthz.threat import LEVELS, Threat, parse_threat

KINDS = ("subject", "device", "prefix")


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
            THREAT_KEY,
            mapping={
                ThreatFields.LEVEL: level,
                ThreatFields.REASON: reason,
                ThreatFields.BY: by,
                ThreatFields.UNTIL: str(until),
            },
        )
        await self._redis.expire(THREAT_KEY, ttl)
        return threat

    async def threat(self) -> Threat:
        return parse_threat(decode_hash(await self._redis.hgetall(THREAT_KEY)))

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
                RiskFields.MULTIPLIER: repr(multiplier),
                RiskFields.SUBJECT: subject,
                RiskFields.REASON: reason,
                RiskFields.UNTIL: str(until),
            },
        )
        await self._redis.expire(key, ttl)
        return until

    async def clear_risk(self, subject: str) -> bool:
        return bool(await self._redis.delete(risk_key(subject)))

    async def risks(self) -> list[dict[str, str]]:
        return await self._scan(RISK_PATTERN)

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
                QuarantineFields.KIND: kind,
                QuarantineFields.TARGET: target,
                QuarantineFields.CAUSE: cause,
                QuarantineFields.BY: by,
                QuarantineFields.SET_AT: str(now),
                QuarantineFields.UNTIL: str(now + ttl),
            },
        )
        await self._redis.expire(key, ttl)
        return target

    async def release(self, kind: str, target: str) -> bool:
        key, _ = self.quarantine_key(kind, target)
        return bool(await self._redis.delete(key))

    async def quarantines(self) -> list[dict[str, str]]:
        return await self._scan(QUARANTINE_PATTERN)

    async def _scan(self, pattern: str) -> list[dict[str, str]]:
        found = []
        async for key in self._redis.scan_iter(match=pattern, count=1000):
            fields = decode_hash(await self._redis.hgetall(key))
            if fields:
                found.append(fields)
        return sorted(
            found,
            key=lambda f: (
                f.get(QuarantineFields.KIND, ""),
                f.get(QuarantineFields.TARGET, f.get(RiskFields.SUBJECT, "")),
            ),
        )
