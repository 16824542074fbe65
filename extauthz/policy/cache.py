"""An in-process decision cache keyed by (policy revision, digest of the canonical input);
concurrent misses share one OPA call (single flight). Failures are never cached.

Bounded by entries AND by bytes: an outsider chooses the inputs, so the bound that matters is
what the entries weigh. Each entry's weight is measured once, on insertion (a miss, which has
just cost an OPA POST); the least recently used entries are evicted until both bounds hold."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from extauthz.clock import Clock, system_clock
from extauthz.metrics import POLICY_CACHE, POLICY_CACHE_BYTES, POLICY_CACHE_EVICTIONS
from extauthz.types import PolicyDecision

# Per entry beyond the decision itself: the OrderedDict slot, the key tuple, its digest and the
# (decision, time) pair (measured with sys.getsizeof on CPython 3.11).
ENTRY_OVERHEAD = 360


def canonical_input(policy_input: dict[str, Any]) -> str:
    """The input's canonical JSON (sorted keys, no spaces): equal inputs, equal text."""
    return json.dumps(policy_input, sort_keys=True, separators=(",", ":"))


def input_digest(policy_input: dict[str, Any], canonical: str = "") -> bytes:
    """A compact key for a policy input: SHA-256 of its canonical JSON, so equal inputs share
    a key whatever their dict order, and a 60 KB input costs 32 bytes."""
    return hashlib.sha256((canonical or canonical_input(policy_input)).encode()).digest()


def weigh(value: object, _seen: set[int] | None = None) -> int:
    """Bytes an object graph of tuples/dicts/strings/numbers/dataclasses holds (getsizeof of
    every object reached once; shared immutables such as interned strings are counted too, so
    this over- rather than under-estimates)."""
    seen = _seen if _seen is not None else set()
    if id(value) in seen:
        return 0
    seen.add(id(value))
    size = sys.getsizeof(value)
    if isinstance(value, dict):
        size += sum(weigh(k, seen) + weigh(v, seen) for k, v in value.items())
    elif isinstance(value, (tuple, list, set, frozenset)):
        size += sum(weigh(v, seen) for v in value)
    elif hasattr(value, "__slots__") or hasattr(value, "__dataclass_fields__"):
        for name in getattr(value, "__dataclass_fields__", ()):
            size += weigh(getattr(value, name), seen)
    return size


class DecisionCache:
    def __init__(
        self,
        maxsize: int,
        name: str = "enforced",
        max_bytes: int = 32 * 1024 * 1024,
        clock: Clock = system_clock,
    ) -> None:
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        self._clock = clock
        self._counters = {
            r: POLICY_CACHE.labels(name, r) for r in ("hit", "miss", "shared", "bypass")
        }
        self._bytes_gauge = POLICY_CACHE_BYTES.labels(name)
        self._evictions = POLICY_CACHE_EVICTIONS.labels(name)
        # (revision, digest) -> (decision, when OPA decided it, its weight in bytes)
        self._entries: OrderedDict[tuple[str, bytes], tuple[PolicyDecision, float, int]] = (
            OrderedDict()
        )
        self._inflight: dict[tuple[str, bytes], asyncio.Future[PolicyDecision]] = {}
        self.bytes = 0
        self.stats = {"hit": 0, "miss": 0, "shared": 0, "bypass": 0, "evicted": 0}

    async def get(
        self,
        revision: str | None,
        key: bytes,
        compute: Callable[[], Awaitable[PolicyDecision]],
    ) -> tuple[PolicyDecision, str]:
        """(decision, how it was obtained: hit | miss | shared | bypass)."""
        if revision is None or self._maxsize <= 0 or self._max_bytes <= 0:
            self._count("bypass")
            return await compute(), "bypass"
        k = (revision, key)
        found = self._entries.get(k)
        if found is not None:
            self._entries.move_to_end(k)
            self._count("hit")
            return found[0], "hit"
        pending = self._inflight.get(k)
        if pending is not None:
            self._count("shared")
            return await asyncio.shield(pending), "shared"
        self._count("miss")
        future: asyncio.Future[PolicyDecision] = asyncio.get_running_loop().create_future()
        self._inflight[k] = future
        try:
            decision = await compute()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must
            raise
        else:
            future.set_result(decision)
            self._put(k, decision)
            return decision, "miss"
        finally:
            del self._inflight[k]

    def peek(self, revision: str, key: bytes) -> tuple[PolicyDecision, float] | None:
        """The cached decision and when OPA made it, without counting or reordering (for
        the fail-open path, which must not keep stale entries alive)."""
        found = self._entries.get((revision, key))
        return None if found is None else (found[0], found[1])

    def _put(self, k: tuple[str, bytes], decision: PolicyDecision) -> None:
        weight = ENTRY_OVERHEAD + weigh(decision)
        old = self._entries.pop(k, None)
        if old is not None:
            self.bytes -= old[2]
        self._entries[k] = (decision, self._clock(), weight)
        self.bytes += weight
        while self._entries and (
            len(self._entries) > self._maxsize or self.bytes > self._max_bytes
        ):
            _, (_, _, w) = self._entries.popitem(last=False)
            self.bytes -= w
            self.stats["evicted"] += 1
            self._evictions.inc()
        self._bytes_gauge.set(self.bytes)

    def _count(self, result: str) -> None:
        self.stats[result] += 1
        self._counters[result].inc()

    def __len__(self) -> int:
        return len(self._entries)
