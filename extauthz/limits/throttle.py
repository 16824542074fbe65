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


class _Sources:
    """Distinct sources, each credential and each network prefix counted at most once: a
    (credential, prefix) pair counts only if neither was counted before in the window (a
    greedy matching), so neither many keys from one network nor one key from many networks
    makes more than one source. Bounded: at most `cap` sources a window."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._credentials: set[str] = set()
        self._prefixes: set[str] = set()

    def add(self, credential: str, prefix: str) -> None:
        if len(self._credentials) >= self._cap:
            return
        if credential in self._credentials or prefix in self._prefixes:
            return
        self._credentials.add(credential)
        self._prefixes.add(prefix)

    def __len__(self) -> int:
        return len(self._credentials)


class RefusedSources:
    """The signal that raises the threat level automatically: within a window, the distinct
    authenticated sources this worker saw, and those it refused (403, or 429 by their own
    windows). Only trusted traffic counts: a source is a credential that authenticated and
    was not quarantined, with the network prefix it came from, each counted once (_Sources).
    Unauthenticated (401) and quarantined requests never count.

    Recording is a few set lookups a decision; read only by the watcher, off the path."""

    def __init__(
        self,
        window: float,
        min_sources: int,
        clock: Clock = system_clock,
        max_tracked: int = 10_000,
    ) -> None:
        self._window = window
        self._min = min_sources
        self._clock = clock
        self._max = max_tracked
        self._started = clock()
        self._seen, self._refused = _Sources(max_tracked), _Sources(max_tracked)

    def record(self, credential: str, prefix: str, refused: bool) -> None:
        self._seen.add(credential, prefix)
        if refused:
            self._refused.add(credential, prefix)

    def take(self) -> tuple[float, int] | None:
        """(refused share of sources, refused sources) once a window has passed with at least
        `min_sources` refused sources; resets."""
        now = self._clock()
        if now - self._started < self._window:
            return None
        seen, refused = len(self._seen), len(self._refused)
        self._started = now
        self._seen, self._refused = _Sources(self._max), _Sources(self._max)
        if refused < max(1, self._min):
            return None
        return refused / max(seen, refused), refused


@dataclass(frozen=True, slots=True)
class AutoThreat:
    """Raise the threat level to `level` for `ttl` seconds when at least `ratio` of the
    authenticated sources a worker saw in a window were refused (many tenants probing or
    scraping at once). Never lowers a level."""

    sources: RefusedSources
    store: ThrottleStore
    ratio: float
    level: str
    ttl: int


class ThreatWatcher(Periodic):
    """The current threat level, polled from Redis every `interval` seconds (never on the
    request path). Redis unreachable: the last level read stays until its own `until`.
    With `auto`, the same poll raises the level when many authenticated sources are refused."""

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

    def record(self, credential: str, prefix: str, refused: bool) -> None:
        """One trusted decision (authenticated, not quarantined): see RefusedSources."""
        if self.auto is not None:
            self.auto.sources.record(credential, prefix, refused)

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
        taken = auto.sources.take()
        if taken is None:
            return
        share, refused = taken
        if share < auto.ratio or LEVELS.index(self.level) >= LEVELS.index(auto.level):
            return
        reason = f"{refused} authenticated sources refused ({share:.0%} of those seen)"
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

    async def set_degrade(self, subject: str, level: int, ttl: int, reason: str = "") -> int:
        """The subject's response degradation level (field `degrade` of its risk hash, read by
        the decision's Lua call): 1 scores rounded to 2 decimals, 2 top-1 class, 3 labels only;
        0 clears it. The hash expires as a whole: the latest write's TTL holds for both fields."""
        if level not in (0, 1, 2, 3):
            raise ValueError("a degradation level is 0, 1, 2 or 3")
        key = risk_key(subject)
        if level == 0:
            await self._redis.hdel(key, "degrade", "degrade_reason", "degrade_until")
            return 0
        until = int(self._clock()) + ttl
        await self._redis.hset(
            key,
            mapping={
                "degrade": str(level),
                "subject": subject,
                "degrade_reason": reason,
                "degrade_until": str(until),
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
