"""`audit search --since/--until` on a real Redis stream: the binary search finds where to start
reading, and a time window finds exactly what a full scan finds inside it."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
import pytest
import redis as syncredis

from extauthz.audit.chain import Chain
from extauthz.audit.sink import WRITERS_KEY, entry_before, stream_key
from extauthz.audit.verify import search
from extauthz.dev.devstack import Stack

pytestmark = pytest.mark.integration
T0 = 1_800_000_000.0


@pytest.fixture
def store(stack: Stack) -> Any:
    client = syncredis.Redis.from_url(stack.settings.redis_url)
    writer = f"search-{secrets.token_hex(3)}"
    chain = Chain(writer)
    # 300 entries of 1..4 records, one record a second: record i is at T0 + i
    i = 0
    for n in [1, 2, 3, 4] * 75:
        first = chain.seq + 1
        lines = []
        for _ in range(n):
            doc = {"ts": T0 + i, "request_id": f"r{i}", "status": 200}
            lines.append(chain.link(orjson.dumps(doc)))
            i += 1
        client.xadd(stream_key(writer), {"r": b"\n".join(lines) + b"\n", "n": n}, id=f"{first}-0")
    client.hset(WRITERS_KEY, writer, b"{}")
    yield client, writer, i
    client.delete(stream_key(writer))
    client.hdel(WRITERS_KEY, writer)
    client.close()


def test_the_entry_before_a_time_is_found_by_binary_search(store: Any) -> None:
    client, writer, total = store
    assert entry_before(client, writer, T0) == "-"  # nothing older
    for t in (1, 2, 9, 10, 11, 374, total - 1, total + 50):
        start = entry_before(client, writer, T0 + t)
        entry = client.xrange(stream_key(writer), start, "+", count=2)
        first = orjson.loads(entry[0][1][b"r"].split(b"\n")[0])["ts"]
        assert first < T0 + t  # starts before the time...
        if len(entry) == 2:  # ...and the next entry starts at or after it
            assert orjson.loads(entry[1][1][b"r"].split(b"\n")[0])["ts"] >= T0 + t


def test_a_time_window_finds_what_a_full_scan_finds_inside_it(store: Any) -> None:
    client, writer, total = store
    for i in (0, 1, 137, 500, total - 1):
        assert [d["request_id"] for d in search(client, f"r{i}")] == [f"r{i}"]
        inside = search(client, f"r{i}", since=T0 + i - 5, until=T0 + i + 5)
        assert [d["request_id"] for d in inside] == [f"r{i}"]
        outside = search(client, f"r{i}", since=T0 + i + 20)
        assert list(outside) == []
        if i > 30:
            assert list(search(client, f"r{i}", until=T0 + i - 20)) == []
