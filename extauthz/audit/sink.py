"""Where audit records go centrally: a `Sink`. Here, a Redis Stream per writer.

Stream `ea:{audit:<writer>}:log` holds one entry per shipment of consecutive records: id
`<first seq>-0`, field `r` = the lines (each ending in a newline), `n` = how many. One entry,
not one per record, keeps Redis' work per shipment to one XADD (measured: a script adding one
entry per record held Redis ~6 µs per record, ~0.5 ms per shipment, time every decision's own
Redis call would wait behind). The hash `ea:{audit}:writers` names every writer that ever
shipped (so a deleted stream is noticed by `audit verify`). Idempotent: the append script
refuses a shipment whose first seq the stream already holds, so a retry never duplicates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from extauthz.audit.chain import GENESIS
from extauthz.store.schema import (
    AUDIT_WRITERS,
    AuditBaseFields,
    audit_base,
    audit_last,
    audit_stream,
)

WRITERS_KEY = AUDIT_WRITERS
OPS_WRITER = "ops"  # the chain of operator actions (the CLI appends to it directly)
stream_key = audit_stream


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


# Adds one entry unless the stream already holds seq ARGV[1]; returns -1, or the last seq it
# holds (the caller's view was stale). The last seq is kept beside the stream (KEYS[2], same
# slot), so the check never reads a stored entry back into the script (that doubled its time).
APPEND_LUA = """
local top = tonumber(redis.call('GET', KEYS[2]) or '-1')
if top < 0 then
  top = 0
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    local fields = last[1][2]
    local n = 1
    for i = 1, #fields, 2 do
      if fields[i] == 'n' then n = tonumber(fields[i + 1]) end
    end
    top = tonumber(string.match(last[1][1], '^(%d+)-')) + n - 1
  end
end
if top >= tonumber(ARGV[1]) then return top end
redis.call('XADD', KEYS[1], ARGV[1] .. '-0', 'r', ARGV[2], 'n', ARGV[3])
redis.call('SET', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[3]) - 1)
return -1
"""


def append_keys(writer: str) -> list[str]:
    """The stream and its last-seq key (one hash tag: one Cluster slot)."""
    return [audit_stream(writer), audit_last(writer)]


def _field(fields: dict[Any, Any], name: str) -> Any:
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value


def entry_last_seq(entry_id: bytes | str, fields: dict[Any, Any]) -> int:
    return _seq_of(entry_id) + int(_field(fields, "n") or 1) - 1


class StaleSink(RuntimeError):
    """The store already holds some of a shipment (another shipper, or a lost reply)."""


class RedisStreamSink:
    """The `Sink` on a synchronous redis-py client (the shipper's own thread and connection)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._append = redis.register_script(APPEND_LUA)

    def last_seq(self, writer: str) -> int:
        stream, kept = append_keys(writer)
        last = self._redis.xrevrange(stream, "+", "-", count=1)
        held = entry_last_seq(*last[0]) if last else 0
        return max(held, int(self._redis.get(kept) or 0))  # a trimmed stream: go on after it

    def append(self, writer: str, first_seq: int, data: bytes) -> None:
        count = data.count(b"\n")
        top = self._append(keys=append_keys(writer), args=[first_seq, data, count])
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
    redis: Any, writer: str, chunk: int = 500, start: str = "-"
) -> Iterator[tuple[int, bytes]]:
    """Every (seq, line) of a writer's stream from entry id `start` on, oldest first, `chunk`
    entries per XRANGE."""
    key = stream_key(writer)
    while True:
        entries = redis.xrange(key, start, "+", count=chunk)
        for entry_id, fields in entries:
            yield from enumerate(_field(fields, "r").splitlines(), _seq_of(entry_id))
        if len(entries) < chunk:
            return
        start = f"{_seq_of(entries[-1][0])}-1"


def entry_before(redis: Any, writer: str, ts: float) -> str:
    """The id of the last entry whose first record is older than `ts` (or "-"): where a reader
    of the records since `ts` starts. A binary search over seqs, ~log2(entries) XRANGEs: records
    of one writer are in time order, so no index is needed."""
    key = stream_key(writer)
    first = redis.xrange(key, "-", "+", count=1)
    last = redis.xrevrange(key, "+", "-", count=1)
    if not first or _first_ts(first[0][1]) >= ts:
        return "-"
    lo, hi = _seq_of(first[0][0]), _seq_of(last[0][0])  # lo's entry is older than ts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        entry = redis.xrange(key, f"{mid}-0", "+", count=1)
        seq = _seq_of(entry[0][0])
        if seq > hi or _first_ts(entry[0][1]) >= ts:
            hi = mid - 1
        else:
            lo = seq
    return f"{lo}-0"


def _first_ts(fields: dict[Any, Any]) -> float:
    data = _field(fields, "r")
    return float(orjson.loads(data[: data.index(b"\n")]).get("ts", 0))


@dataclass(frozen=True)
class Base:
    """Where a writer's stream begins: records 1..seq are archived; record seq has hash head."""

    seq: int = 0
    head: str = GENESIS
    file: str = ""
    sha256: str = ""


def read_base(redis: Any, writer: str) -> Base:
    raw = redis.hgetall(audit_base(writer))
    if not raw:
        return Base()
    f = AuditBaseFields
    doc = {(k.decode() if isinstance(k, bytes) else k): v for k, v in raw.items()}

    def text(name: str) -> str:
        value = doc.get(name, b"")
        return value.decode() if isinstance(value, bytes) else str(value)

    return Base(int(text(f.SEQ) or 0), text(f.HEAD) or GENESIS, text(f.FILE), text(f.SHA256))


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
