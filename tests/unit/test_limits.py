"""The limiter's pure parts: key schema, client address, the sliding-window algorithm (the
Lua script's twin), the local over-limit cache, threat factors."""

from __future__ import annotations

import random

import pytest

from extauthz.limits.memory import MemoryWindows, OverLimitCache, evaluate
from extauthz.limits.throttle import parse_factors, prefix_of
from extauthz.store.schema import (
    counter_key,
    dimension_values,
    source_prefix,
    subject_tag,
)
from extauthz.types import Device, Principal, Window

ALICE = Principal("alice", (), (), "standard", "api_key", "k1", "ea:{key:k1}:key")


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("::ffff:203.0.113.77", "203.0.113.0/24"),  # IPv4-mapped counts as IPv4
        ("2001:db8:aa:bbcc::1", "2001:db8:aa:bb00::/56"),
        ("not-an-ip", "unknown"),
        ("", "unknown"),
    ],
)
def test_source_prefix(address: str, prefix: str) -> None:
    assert source_prefix(address) == prefix


def test_source_prefix_lengths_are_settings() -> None:
    assert source_prefix("203.0.113.77", 16, 48) == "203.0.0.0/16"
    assert source_prefix("2001:db8:aa:bbcc::1", 16, 48) == "2001:db8:aa::/48"


def test_counter_keys_share_the_tag_of_what_they_count() -> None:
    dims = dimension_values(ALICE, "203.0.113.0/24", "digits", "vision")
    sub = subject_tag("alice")
    assert counter_key(dims, Window("m", 5, 60)) == f"ea:{{{sub}}}:rl:m:60:c=key:k1"
    assert counter_key(dims, Window("m", 5, 60, ("subject", "model"))) == (
        f"ea:{{{sub}}}:rl:m:60:s={sub},m=digits"
    )
    net = counter_key(dims, Window("n", 5, 60, ("source_prefix",)))
    assert net == "ea:{pfx:203.0.113.0/24}:rl:n:60:n=203.0.113.0/24"
    assert counter_key(dims, Window("d", 5, 60, ("device",))) is None  # no proof: no window
    model = counter_key(dims, Window("x", 5, 60, ("model",)))
    assert model == "ea:{model:digits}:rl:x:60:m=digits"
    project = counter_key(dims, Window("p", 5, 60, ("project", "model")))
    assert project is not None and project.startswith("ea:{proj:")
    assert "vision" not in project  # hashed: a project name may hold '{'


def test_a_device_window_is_keyed_by_the_device() -> None:
    from dataclasses import replace

    bound = replace(ALICE, device=Device("jkt-thumbprint", "managed"))
    key = counter_key(dimension_values(bound, "x"), Window("d", 5, 60, ("device",)))
    assert key is not None and key.startswith("ea:{dev:")


def exact_count(admitted: list[int], now: int, length: int) -> int:
    return sum(1 for t in admitted if now - length < t <= now)


def test_the_algorithm_never_lets_a_trailing_window_hold_more_than_the_limit() -> None:
    rng = random.Random(5)
    windows = MemoryWindows()
    admitted: list[int] = []
    now = 1_800_000_000_000
    for _ in range(5000):
        now += int(rng.expovariate(1 / 300))  # ~3 requests a second, bursty enough
        ok, _ = windows.check([("k", 50, 60_000)], now, 20)
        if ok:
            admitted.append(now)
            assert exact_count(admitted, now, 60_000) <= 50
    assert len(admitted) > 0.9 * 50 * (now - 1_800_000_000_000) / 60_000  # and not far under


def test_retry_after_is_when_room_returns() -> None:
    buckets: dict[int, int] = {}
    windows = MemoryWindows()
    now = 1_800_000_000_000
    for _ in range(5):
        assert windows.check([("k", 5, 60_000)], now, 20)[0]
        now += 1000
    ok, [(_, verdict)] = windows.check([("k", 5, 60_000)], now, 20)
    assert not ok and verdict.wait_ms > 0
    assert not windows.check([("k", 5, 60_000)], now + verdict.wait_ms - 1, 20)[0]
    assert windows.check([("k", 5, 60_000)], now + verdict.wait_ms, 20)[0]
    assert evaluate(buckets, now, 0, 60_000, 20).wait_ms == 60_000  # a zero limit: a window


def test_a_denied_check_consumes_nothing() -> None:
    windows = MemoryWindows()
    now = 1_800_000_000_000
    assert windows.check([("a", 1, 1000), ("b", 5, 60_000)], now, 20)[0]
    for _ in range(10):
        assert not windows.check([("a", 1, 1000), ("b", 5, 60_000)], now, 20)[0]
    ok, verdicts = windows.check([("b", 5, 60_000)], now, 20)
    assert ok and verdicts[0][1].used == 1


def test_memory_windows_are_bounded() -> None:
    windows = MemoryWindows(maxsize=100)
    for i in range(1000):
        windows.check([(f"k{i}", 5, 1000)], 1_800_000_000_000, 20)
    assert len(windows) == 100


def test_the_over_limit_cache_is_trusted_for_max_age_and_bounded() -> None:
    cache = OverLimitCache(maxsize=3, max_age=2.0)
    cache.put("a", until=100.0, now=0.0)
    assert cache.until("a", 1.0) == 100.0  # Retry-After from the true end
    assert cache.until("a", 2.5) is None  # past max_age: ask Redis again
    for key in "bcde":
        cache.put(key, until=10.0, now=0.0)
    assert len(cache) == 3 and cache.until("b", 0.5) is None  # least recent dropped
    cache.put("f", until=1.0, now=5.0)  # already over: not stored
    assert cache.until("f", 5.0) is None
    assert not OverLimitCache(maxsize=0)


def test_threat_factors_and_operator_prefixes() -> None:
    assert parse_factors("elevated=0.5, high=0.25,critical=0.1") == {
        "elevated": 0.5,
        "high": 0.25,
        "critical": 0.1,
    }
    for bad in ("elevated=2", "panic=0.5", "elevated"):
        with pytest.raises(ValueError):
            parse_factors(bad)
    assert prefix_of("203.0.113.9", 24, 56) == "203.0.113.0/24"
    assert prefix_of("203.0.113.0/24", 24, 56) == "203.0.113.0/24"
    assert prefix_of("2001:db8::/64", 24, 56) == "2001:db8::/56"
    with pytest.raises(ValueError):
        prefix_of("203.0.0.0/16", 24, 56)  # wider than what the limiter counts per
