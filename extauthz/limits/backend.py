"""Strategy and storage apart (as envoyproxy/ratelimit and alisaifee/limits keep them): the
Limiter (limiter.py) plans a decision and picks a backend; a backend stores and counts. Two
backends: Redis (redis_backend.py, the shared state) and the worker's memory (fallback.py, while
Redis is down for a fail-open model)."""

from __future__ import annotations

from typing import Protocol

from extauthz.limits.plan import Plan
from extauthz.types import LimitResult


class StorageError(Exception):
    """The backend could not answer (Redis unreachable, refused, or a reply that is not one):
    the caller decides between fail-closed (503) and the fallback."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.kind = type(cause).__name__


class QuotaBackend(Protocol):
    async def consume(self, plan: Plan, now: float) -> LimitResult:
        """Check every state, quarantine, single-use key and window of `plan` at `now` (epoch
        s); consume only if all pass. Raises Denied (401: a credential no longer active, a
        replayed proof; 429: quarantined) or StorageError."""
        ...
