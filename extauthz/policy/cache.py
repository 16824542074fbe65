"""An in-process decision cache keyed by (policy revision, input); concurrent misses share one
OPA call (single flight). Failures are never cached."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from extauthz.metrics import POLICY_CACHE
from extauthz.types import PolicyDecision


class DecisionCache:
    def __init__(self, maxsize: int, name: str = "enforced") -> None:
        self._maxsize = maxsize
        self._counters = {
            r: POLICY_CACHE.labels(name, r) for r in ("hit", "miss", "shared", "bypass")
        }
        self._entries: OrderedDict[tuple[str, str], PolicyDecision] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[PolicyDecision]] = {}
        self.stats = {"hit": 0, "miss": 0, "shared": 0, "bypass": 0}

    async def get(
        self,
        revision: str | None,
        key: str,
        compute: Callable[[], Awaitable[PolicyDecision]],
    ) -> tuple[PolicyDecision, str]:
        """(decision, how it was obtained: hit | miss | shared | bypass)."""
        if revision is None or self._maxsize <= 0:
            self._count("bypass")
            return await compute(), "bypass"
        k = (revision, key)
        found = self._entries.get(k)
        if found is not None:
            self._entries.move_to_end(k)
            self._count("hit")
            return found, "hit"
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
            self._entries[k] = decision
            if len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)
            return decision, "miss"
        finally:
            del self._inflight[k]

    def _count(self, result: str) -> None:
        self.stats[result] += 1
        self._counters[result].inc()

    def __len__(self) -> int:
        return len(self._entries)
