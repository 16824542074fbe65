import asyncio

import pytest

from extauthz.policy.cache import DecisionCache
from extauthz.types import Denied, PolicyDecision, Reason, Status

ALLOW = PolicyDecision(True, 200, "ok")


class Counting:
    def __init__(self, result: PolicyDecision | Exception = ALLOW, delay: float = 0) -> None:
        self.calls = 0
        self.result = result
        self.delay = delay

    async def __call__(self) -> PolicyDecision:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


async def test_hit_after_miss_and_keyed_by_revision() -> None:
    cache, compute = DecisionCache(10), Counting()
    assert (await cache.get("r1", "k", compute))[1] == "miss"
    assert (await cache.get("r1", "k", compute))[1] == "hit"
    assert (await cache.get("r2", "k", compute))[1] == "miss"  # a new policy revision
    assert (await cache.get("r1", "other", compute))[1] == "miss"
    assert compute.calls == 3


async def test_concurrent_misses_make_one_call() -> None:
    cache, compute = DecisionCache(10), Counting(delay=0.01)
    results = await asyncio.gather(*(cache.get("r", "k", compute) for _ in range(20)))
    assert compute.calls == 1
    assert sorted(how for _, how in results) == ["miss"] + ["shared"] * 19
    assert all(d is ALLOW for d, _ in results)


async def test_failures_reach_every_waiter_and_are_not_cached() -> None:
    cache = DecisionCache(10)
    failing = Counting(Denied(Status.UNAVAILABLE, Reason.OPA_UNAVAILABLE), delay=0.01)
    results = await asyncio.gather(
        *(cache.get("r", "k", failing) for _ in range(5)), return_exceptions=True
    )
    assert failing.calls == 1
    assert all(isinstance(r, Denied) for r in results)
    ok = Counting()
    assert (await cache.get("r", "k", ok))[1] == "miss" and ok.calls == 1


async def test_unconfirmed_revision_bypasses_the_cache() -> None:
    cache, compute = DecisionCache(10), Counting()
    await cache.get("r", "k", compute)
    assert (await cache.get(None, "k", compute))[1] == "bypass"
    assert compute.calls == 2


async def test_bounded_lru() -> None:
    cache, compute = DecisionCache(2), Counting()
    for key in ("a", "b", "a", "c"):  # "b" is least recently used when "c" arrives
        await cache.get("r", key, compute)
    assert len(cache) == 2
    assert (await cache.get("r", "a", compute))[1] == "hit"
    assert (await cache.get("r", "b", compute))[1] == "miss"


@pytest.mark.parametrize("size", [0, -1])
async def test_disabled_cache(size: int) -> None:
    cache, compute = DecisionCache(size), Counting()
    await cache.get("r", "k", compute)
    assert (await cache.get("r", "k", compute))[1] == "bypass"


async def test_bounded_by_bytes_with_a_metric_of_bytes_and_evictions() -> None:
    """Finding 3: whatever the entry count, the cache never holds more than its byte bound."""
    from extauthz.metrics import POLICY_CACHE_BYTES, POLICY_CACHE_EVICTIONS

    big = PolicyDecision(False, 403, "x" * 10_000)  # a heavy decision
    cache = DecisionCache(1_000_000, name="bytes-test", max_bytes=100_000)
    for i in range(50):
        await cache.get("r", f"k{i}".encode(), Counting(big))
    assert 0 < cache.bytes <= 100_000
    assert len(cache) < 10 and cache.stats["evicted"] == 50 - len(cache)
    assert POLICY_CACHE_BYTES.labels("bytes-test")._value.get() == cache.bytes
    assert POLICY_CACHE_EVICTIONS.labels("bytes-test")._value.get() == cache.stats["evicted"]
    assert (await cache.get("r", b"k49", Counting(big)))[1] == "hit"  # most recent kept
    assert (await cache.get("r", b"k0", Counting(big)))[1] == "miss"


def test_the_key_is_a_small_digest_of_the_canonical_input() -> None:
    from extauthz.policy.cache import input_digest

    a = {"request": {"body": {"outputs": ["o" * 60_000]}, "model": "m"}, "principal": {}}
    b = {"principal": {}, "request": {"model": "m", "body": {"outputs": ["o" * 60_000]}}}
    assert input_digest(a) == input_digest(b) and len(input_digest(a)) == 32
    assert input_digest(a) != input_digest({**a, "principal": {"subject": "x"}})
