"""The query stream: one compact event per allowed inference decision, sent off the request path.

On the request path `QueryEmitter.emit` appends one tuple to a bounded in-process queue (no
Redis, no parsing, no await); a background task wakes every `interval` seconds and sends what
queued in one pipelined round trip of `XADD ... MAXLEN ~ <maxlen>` per shard stream. A full
queue, an over-size body or a failed send drops events and counts them
(`extauthz_analytics_events_total`): analytics is best effort, the decision never waits on it.

An event carries the tenant (subject, credential id, device, source prefix), the model and the
body's bytes: the worker reads them with the same reader the policy used
(`extauthz.v2body.read_body`, then `feature_rows()`), so the decision does not pay for it. A
body over `max_body` is replaced (in the background) by its canonical rows, at most
`sketch_rows` of them, so the stream stays bounded and large or padded bodies are still scored.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from extauthz.metrics import ANALYTICS_EVENTS
from extauthz.periodic import stop_task
from extauthz.store.schema import analytics_stream, source_prefix
from extauthz.types import Decision, RequestView, Status
from extauthz.v2body import read_body

log = logging.getLogger(__name__)


def shard_of(subject: str, shards: int) -> int:
    """Every event of one subject goes to one shard (CRC32: stable across processes)."""
    return zlib.crc32(subject.encode()) % shards


@dataclass(frozen=True, slots=True)
class QueryEvent:
    """One allowed inference request, as the worker reads it from a shard stream."""

    ts_ms: int
    subject: str
    credential_id: str
    device: str  # the DPoP key thumbprint, "" without one
    prefix: str  # the source network (the limiter's /24 or /56)
    model: str
    body: bytes  # as sent, or a sketch of its rows when larger than max_body (body_size)
    body_size: int

    def fields(self) -> dict[str, bytes]:
        """One stream field: the tenant as JSON, a newline, the body (fewer arguments per XADD
        is most of what sending costs the service process)."""
        head = orjson.dumps(
            [
                self.ts_ms,
                self.subject,
                self.credential_id,
                self.device,
                self.prefix,
                self.model,
                self.body_size,
            ]
        )
        return {"e": head + b"\n" + self.body}

    @classmethod
    def parse(cls, fields: dict[bytes, bytes]) -> QueryEvent:
        """Raises KeyError/ValueError on a malformed entry (the worker skips and counts it)."""
        head, _, body = fields[b"e"].partition(b"\n")
        ts_ms, subject, credential_id, device, prefix, model, size = orjson.loads(head)
        return cls(int(ts_ms), subject, credential_id, device, prefix, model, body, int(size))


class QueryEmitter:
    """Bounded in entries and bytes; the decision path only appends (see module docstring)."""

    def __init__(
        self,
        redis: Any,
        shards: int,
        maxlen: int,
        queue_size: int = 10_000,
        queue_bytes: int = 8 * 1024 * 1024,
        max_body: int = 8_192,
        sketch_rows: int = 8,
        interval: float = 0.05,
        v4_bits: int = 24,
        v6_bits: int = 56,
    ) -> None:
        self._redis = redis
        self._shards = shards
        self._maxlen = maxlen
        self._size = queue_size
        self._max_bytes = queue_bytes
        self._max_body = max_body
        self._sketch_rows = sketch_rows
        self._interval = interval
        self._v4, self._v6 = v4_bits, v6_bits
        self._queue: deque[tuple[int, RequestView, Decision]] = deque()
        self._bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def emit(self, view: RequestView, decision: Decision) -> None:
        """Queue an allowed inference decision; never blocks, never raises on a full queue."""
        if decision.status is not Status.OK or view.route.action != "infer":
            return
        size = len(view.body)
        if len(self._queue) >= self._size or self._bytes + size > self._max_bytes:
            ANALYTICS_EVENTS.labels("dropped").inc()
            return
        self._bytes += size
        self._queue.append((time.time_ns() // 1_000_000, view, decision))

    def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="analytics-events")

    async def stop(self) -> None:
        """Send what is queued (best effort), then stop."""
        if self._task is not None:
            self._stopping = True
            await stop_task(self._task)
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._interval)
            await self.flush()

    def _event(self, ts_ms: int, view: RequestView, decision: Decision) -> QueryEvent | None:
        principal = decision.principal
        if principal is None:
            return None
        body = view.body if len(view.body) <= self._max_body else self._sketch(view.body)
        return QueryEvent(
            ts_ms=ts_ms,
            subject=principal.subject,
            credential_id=principal.credential_id,
            device=principal.device.thumbprint,
            prefix=source_prefix(view.source_ip, self._v4, self._v6),
            model=view.route.name,
            body=body,
            body_size=len(view.body),
        )

    def _sketch(self, body: bytes) -> bytes:
        """A body over max_body (a large batch, or padded numbers): its canonical rows, at most
        `sketch_rows` of them evenly spaced, re-encoded as a small V2 body (off the path, and
        only for large bodies: padding a body does not hide it from the detectors)."""
        facts = read_body(body)
        rows = facts.feature_rows()
        if not rows:
            ANALYTICS_EVENTS.labels("body_omitted").inc()
            return b""
        ANALYTICS_EVENTS.labels("sketched").inc()
        step = max(1, len(rows) / self._sketch_rows)
        kept = [rows[int(i * step)] for i in range(min(len(rows), self._sketch_rows))]
        doc: dict[str, Any] = {
            "inputs": [
                {
                    "name": "rows",
                    "shape": [len(kept), facts.features],
                    "datatype": "FP64",
                    "data": [v for row in kept for v in row],
                }
            ]
        }
        if facts.outputs:
            doc["outputs"] = [{"name": name} for name in facts.outputs]
        return orjson.dumps(doc)

    async def flush(self) -> int:
        """Send every queued event in one pipeline; returns how many were sent."""
        if not self._queue:
            return 0
        queued, self._queue, self._bytes = self._queue, deque(), 0
        pipe = self._redis.pipeline(transaction=False)
        sent = 0
        for ts_ms, view, decision in queued:
            event = self._event(ts_ms, view, decision)
            if event is None:
                continue
            key = analytics_stream(shard_of(event.subject, self._shards))
            pipe.xadd(key, event.fields(), maxlen=self._maxlen, approximate=True)
            sent += 1
        try:
            await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            ANALYTICS_EVENTS.labels("failed").inc(sent)
            log.debug("query events not sent: %s", exc)
            return 0
        ANALYTICS_EVENTS.labels("sent").inc(sent)
        return sent
