"""Where audit records go centrally: a `Sink`. Here, a Redis Stream per writer.

Stream `ea:{audit:<writer>}:log` holds one entry per record, id `<seq>-0`, field `r` = the
line; the hash `ea:{audit}:writers` names every writer that ever shipped (so a deleted stream is
noticed by `audit verify`). Explicit ids make shipping idempotent: the shipper asks for the last
id and sends only what follows, so a retry after an outage never duplicates a record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import orjson

WRITERS_KEY = "ea:{audit}:writers"
OPS_WRITER = "ops"  # the chain of operator actions (the CLI appends to it directly)


def stream_key(writer: str) -> str:
    return f"ea:{{audit:{writer}}}:log"


class Sink(Protocol):
    """A central store of chains: append in order, idempotently by seq."""

    def last_seq(self, writer: str) -> int:
        """The highest seq the store holds for `writer` (0: none)."""

    def append(self, writer: str, first_seq: int, data: bytes) -> None:
        """Store newline-terminated lines whose seqs run from `first_seq` on, each above
        last_seq, in order; raise on failure."""

    def register(self, writer: str, meta: dict[str, Any]) -> None:
        """Name the writer in the store's list of writers."""


def _seq_of(entry_id: bytes | str) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[0])


# One call per shipment: the lines go as one argument, split and added by the script, which
# refuses them all if the stream already holds their first seq or a later one (a stale view:
# the shipper asks again). One command with one argument keeps the shipper's CPU (and GIL)
# time per record small.
_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local top = 0
if #last > 0 then top = tonumber(string.match(last[1][1], '^(%d+)-')) end
local seq = tonumber(ARGV[1])
if top >= seq then return top end
local data = ARGV[2]
local pos = 1
while pos <= #data do
  local nl = string.find(data, '\\n', pos, true)
  redis.call('XADD', KEYS[1], string.format('%d-0', seq), 'r', string.sub(data, pos, nl - 1))
  seq = seq + 1
  pos = nl + 1
end
return -1
"""


class StaleSink(RuntimeError):
    """The store already holds some of a shipment (another shipper, or a lost reply)."""


class RedisStreamSink:
    """The `Sink` on a synchronous redis-py client (the shipper's own thread and connection)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._append = redis.register_script(_APPEND)

    def last_seq(self, writer: str) -> int:
        last = self._redis.xrevrange(stream_key(writer), "+", "-", count=1)
        return _seq_of(last[0][0]) if last else 0

    def append(self, writer: str, first_seq: int, data: bytes) -> None:
        top = self._append(keys=[stream_key(writer)], args=[first_seq, data])
        if int(top) != -1:
            raise StaleSink(f"the store holds {writer} up to seq {top}")

    def register(self, writer: str, meta: dict[str, Any]) -> None:
        self._redis.hsetnx(WRITERS_KEY, writer, orjson.dumps(meta))

    def close(self) -> None:
        self._redis.close()


# ---- reading the central store (audit verify / export / search)
def writers(redis: Any) -> list[str]:
    names = redis.hkeys(WRITERS_KEY)
    return sorted(n.decode() if isinstance(n, bytes) else n for n in names)


def read_stream(
    redis: Any, writer: str, after: int = 0, chunk: int = 10_000
) -> Iterator[tuple[int, bytes]]:
    """Every (seq, line) of a writer's stream, oldest first, `chunk` entries per XRANGE."""
    key = stream_key(writer)
    start = f"{after}-1" if after else "-"
    while True:
        entries = redis.xrange(key, start, "+", count=chunk)
        for entry_id, fields in entries:
            yield _seq_of(entry_id), fields[b"r"] if b"r" in fields else fields["r"]
        if len(entries) < chunk:
            return
        start = f"{_seq_of(entries[-1][0])}-1"


def sync_redis_client(settings: Any, timeout: float) -> Any:
    """A blocking client on the service's Redis settings (the shipper, the `audit` CLI)."""
    import redis as syncredis
    from redis.cluster import RedisCluster as SyncCluster

    if settings.redis_cluster:
        return SyncCluster.from_url(
            settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    return syncredis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
