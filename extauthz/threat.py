"""The threat level every worker applies: polled from Redis off the request path (like the
policy revision, policy/revision.py), raised automatically when many authenticated sources are
refused at once. Operators set it with `extauthz throttle set --level` (limits/throttle.py).

- Threat level (`ea:threat`): normal | elevated | high | critical, with a TTL. Limits are
  multiplied by the policy's factor for the level and the model's sensitivity
  (`quota_context.throttle`). Expires back to normal.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import RedisError

from extauthz.clock import Clock, system_clock
from extauthz.metrics import THREAT_LEVEL
from extauthz.periodic import Periodic
from extauthz.store.schema import THREAT_KEY, ThreatFields, decode_hash

log = logging.getLogger(__name__)

LEVELS = ("normal", "elevated", "high", "critical")


class ThreatWriter(Protocol):
    """Where an automatic raise is written (limits/throttle.ThrottleStore)."""

    async def set_threat(
        self, level: str, ttl: int, reason: str = "", by: str = "cli"
    ) -> Threat: ...


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
    store: ThreatWriter
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
        threat = parse_threat(decode_hash(raw))
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
    f = ThreatFields
    level = fields.get(f.LEVEL, "normal")
    if level not in LEVELS:
        level = "normal"
    return Threat(
        level, fields.get(f.REASON, ""), fields.get(f.BY, ""), int(fields.get(f.UNTIL) or 0)
    )
