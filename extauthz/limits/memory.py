"""In-process counterparts of the Redis state: the sliding-window algorithm of
check_and_consume.lua in Python (the fallback limiter while Redis is down), and the local
over-limit cache that keeps floods away from Redis."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Verdict:
    used: int  # requests the window holds (conservatively) before this one
    wait_ms: int  # 0 if there is room, else ms until a request would be admitted
    reset_ms: int  # ms until its oldest counted request leaves (after this one, if admitted)


def evaluate(buckets: dict[int, int], now_ms: int, limit: int, length_ms: int, k: int) -> Verdict:
    """One window, as check_and_consume.lua counts it: sub-buckets of length_ms / k; every
    sub-bucket overlapping (now - length, now] counts in full."""
    size = length_ms / k
    cur = int(now_ms // size)
    counted = sorted((b, c) for b, c in buckets.items() if b >= cur - k)
    used = sum(c for _, c in counted)
    wait = 0
    if used + 1 > limit:
        wait = length_ms
        if limit >= 1:
            left = used
            for b, c in counted:
                left -= c
                if left + 1 <= limit:
                    wait = int((b + k + 1) * size - now_ms)
                    break
        wait = max(1, wait)
        reset = wait
    else:
        oldest = min(counted[0][0], cur) if counted else cur
        reset = int((oldest + k + 1) * size - now_ms)
    return Verdict(used, wait, reset)


class MemoryWindows:
    """Per-worker counters for the fallback limiter (fail_mode open while Redis is down).
    Bounded: the least recently used counters are dropped first."""

    def __init__(self, maxsize: int = 100_000) -> None:
        self._counters: OrderedDict[str, dict[int, int]] = OrderedDict()
        self._maxsize = maxsize

    def check(
        self, windows: list[tuple[str, int, int]], now_ms: int, k: int
    ) -> tuple[bool, list[tuple[int, Verdict]]]:
        """windows: (counter key, limit, length ms). (admitted, [(limit, verdict)]); consumes
        in every window only if all have room."""
        verdicts = []
        for key, limit, length in windows:
            buckets = self._counters.get(key) or {}
            verdicts.append((limit, evaluate(buckets, now_ms, limit, length, k)))
        admitted = all(v.wait_ms == 0 for _, v in verdicts)
        if admitted:
            for key, _, length in windows:
                cur = int(now_ms // (length / k))
                buckets = self._counters.setdefault(key, {})
                for b in [b for b in buckets if b < cur - k]:
                    del buckets[b]
                buckets[cur] = buckets.get(cur, 0) + 1
                self._counters.move_to_end(key)
            while len(self._counters) > self._maxsize:
                self._counters.popitem(last=False)
        return admitted, verdicts

    def __len__(self) -> int:
        return len(self._counters)


class OverLimitCache:
    """Keys known to be over limit (or quarantined) until a time, per worker, like
    envoyproxy/ratelimit's local cache: a flood is denied in-process, without Redis.

    An entry is trusted for at most `max_age` seconds even if it is good for longer, so that a
    quarantine release or a raised limit reaches every worker within max_age; Retry-After is
    still computed from the true end. Bounded: least recently set entries go first."""

    def __init__(self, maxsize: int = 100_000, max_age: float = 2.0) -> None:
        self._entries: OrderedDict[object, tuple[float, float]] = OrderedDict()
        self._maxsize = maxsize
        self._max_age = max_age

    def until(self, key: object, now: float) -> float | None:
        """When `key` has room again (epoch s), if it is known to be over limit now."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        trusted, until = entry
        if now >= trusted:
            del self._entries[key]
            return None
        return until

    def put(self, key: object, until: float, now: float) -> None:
        if self._maxsize <= 0 or until <= now:
            return
        self._entries[key] = (min(until, now + self._max_age), until)
        self._entries.move_to_end(key)
        while len(self._entries) > self._maxsize:
            self._entries.popitem(last=False)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
