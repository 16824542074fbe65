"""One process's audit writer: chain → spool (fsync'd per group) → shipper thread → sink.

The decision log's writer thread hands each batch of records to `write()` (one batch per flush
interval), which chains them and appends them to the spool (then they are in the kernel: a
killed process cannot lose them), fsyncs at most every `fsync_interval` (groups of batches: a
crashed host loses at most that), and signs a checkpoint every `checkpoint_interval` seconds. A
second thread ships what is fsync'd to the sink, in order, from the spool files: while the sink
is down the spool fills, after it drains, idempotent by seq. Nothing here runs on the request
path.

Losses: SIGTERM/SIGINT none (close() writes, fsyncs and signs everything queued; what the sink
has not taken yet stays in the spool for the next start). SIGKILL: the records queued since the
last batch (one flush interval, plus the time of the write itself).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extauthz.audit.chain import Chain, key_id
from extauthz.audit.sink import Sink
from extauthz.audit.spool import Cursor, Spool
from extauthz.metrics import AUDIT_RECORDS, AUDIT_SINK_ERRORS, AUDIT_SPOOL_BEHIND

log = logging.getLogger(__name__)

_RETRY = 0.5  # seconds between attempts while the sink is down
# Seconds the shipper lets records gather once it has caught up: fewer, larger shipments (each
# wake-up of a thread costs the event loop a GIL hand-off). The store lags by about this much.
SHIP_EVERY = 0.2
_BATCH_BYTES = 256 * 1024  # most bytes one shipment carries (one Lua call)


class AuditWriter:
    def __init__(
        self,
        spool: Spool,
        key: Ed25519PrivateKey,
        sink: Callable[[], Sink] | None,
        checkpoint_interval: float = 2.0,
        drain_timeout: float = 3.0,
        fsync_interval: float = 0.25,
    ) -> None:
        self.spool = spool
        self._key = key
        self._kid = key_id(key.public_key())
        self._sink_factory = sink
        self.checkpoint_interval = checkpoint_interval
        self._drain_timeout = drain_timeout
        self._fsync_interval = fsync_interval
        self._last_fsync = 0.0
        self._written = False  # appended since the last fsync
        self._chain: Chain | None = None
        self._pending: list[bytes] = []  # chained lines a failed write still owes the spool
        self._last_checkpoint = 0.0
        self._signed_seq = 0
        self._stopping = threading.Event()
        self._draining = threading.Event()  # close(): ship at once, no gathering
        self._shipper: threading.Thread | None = None
        self.shipped_seq = 0  # what the sink holds, as far as this process knows
        # CPU seconds spent by the audit (thread time: precise, unlike the kernel's ticks)
        self.writer_cpu = 0.0
        self.shipper_cpu = 0.0

    @property
    def wake_interval(self) -> float:
        """How often an idle writer thread should call `write([])` (fsync, sign)."""
        return min(self.checkpoint_interval, self._fsync_interval)

    @property
    def writer(self) -> str:
        return self.spool.writer

    def open(self) -> None:
        """Lock the spool, resume its chain (an `open` record and a checkpoint over what an
        earlier process left unsigned), start shipping."""
        seq, head = self.spool.open()
        self._chain = Chain(self.spool.writer, seq, head)
        opened = {"kind": "open", "ts": round(time.time(), 6), "pid": os.getpid()}
        self._append([self._chain.link(orjson.dumps(opened))])
        self._sign()
        self.spool.sync()
        if self._sink_factory is not None:
            self._shipper = threading.Thread(
                target=self._ship_forever, name="audit-shipper", daemon=True
            )
            self._shipper.start()
        log.info("audit writer %s resumes at seq %d", self.writer, seq)

    def write(self, records: list[bytes]) -> None:
        """Chain records (JSON objects, each ending in a newline), spool, fsync, maybe sign.
        The decision log's writer thread calls it once per batch."""
        started = time.thread_time()
        try:
            self._write(records)
        finally:
            self.writer_cpu += time.thread_time() - started

    def _write(self, records: list[bytes]) -> None:
        chain = self._chain
        assert chain is not None
        lines = [chain.link(r[:-1] if r.endswith(b"\n") else r) for r in records if r]
        due = time.monotonic() - self._last_checkpoint >= self.checkpoint_interval
        if due and chain.seq != self._signed_seq:
            lines.append(chain.checkpoint(self._key, self._kid))
            self._last_checkpoint = time.monotonic()
            self._signed_seq = chain.seq
        if lines:
            self._append(lines)  # in the kernel now: a killed process loses none of it
            AUDIT_RECORDS.labels("chained").inc(len(lines))
        if self._written and time.monotonic() - self._last_fsync >= self._fsync_interval:
            self._sync()  # on disk: a crashed host loses none of it (groups of writes per fsync)

    def _sync(self) -> None:
        try:
            self.spool.sync()
        except OSError:
            log.exception("audit spool fsync failed")
            return
        self._last_fsync = time.monotonic()
        self._written = False

    def close(self) -> None:
        """Sign the head, fsync, give the shipper `drain_timeout` to empty the spool, unlock."""
        if self._chain is None:
            return
        if self._chain.seq != self._signed_seq:
            self._sign()
        self.spool.sync()
        if self._shipper is not None:
            self._draining.set()
            deadline = time.monotonic() + self._drain_timeout
            while self.shipped_seq < self._chain.seq and time.monotonic() < deadline:
                time.sleep(0.02)
            self._stopping.set()
            self._shipper.join()
            self._shipper = None
        if self._sink_factory is not None and self.shipped_seq < self._chain.seq:
            log.warning(
                "audit: %d records stay in the spool %s for the next start",
                self._chain.seq - self.shipped_seq,
                self.spool.directory,
            )
        self.spool.close()
        self._chain = None

    # ---- internals
    def _sign(self) -> None:
        assert self._chain is not None
        self._append([self._chain.checkpoint(self._key, self._kid)])
        self._last_checkpoint = time.monotonic()
        self._signed_seq = self._chain.seq

    def _append(self, lines: list[bytes]) -> None:
        assert self._chain is not None
        lines = self._pending + lines
        if not lines:
            return
        try:
            self.spool.append(b"\n".join(lines) + b"\n", self._chain.seq)
            self._written = True
        except OSError:  # e.g. a full disk: keep them (chained) and try again next batch
            log.exception("audit spool write failed; %d records held in memory", len(lines))
            self._pending = lines
            return
        self._pending = []

    def _ship_forever(self) -> None:
        assert self._sink_factory is not None
        sink: Sink | None = None
        shipped: int | None = None  # None: ask the sink
        cursor = Cursor(0, 0)
        failures = 0
        while not self._stopping.is_set():
            self.shipper_cpu = time.thread_time()  # this thread's, all of it
            durable = self.spool.wait_durable(shipped or 0, 0.2)
            try:
                if sink is None:
                    sink = self._sink_factory()
                if shipped is None:
                    shipped = sink.last_seq(self.writer)
                    sink.register(self.writer, _meta())
                    cursor = self.spool.locate(shipped)
                    self.spool.drop_shipped(shipped)
                runs, after = self.spool.read(cursor, durable, _BATCH_BYTES)
                if runs and runs[0][0] <= shipped:  # only after a re-locate: skip what it has
                    runs = self.spool.runs(b"".join(data for _, data in runs), above=shipped)
                for first, data in runs:
                    if first != shipped + 1:
                        log.error(
                            "audit: spool of %s lacks seq %d..%d (the sink will show a gap)",
                            self.writer,
                            shipped + 1,
                            first - 1,
                        )
                    sink.append(self.writer, first, data)
                    count = data.count(b"\n")
                    shipped = first + count - 1
                    AUDIT_RECORDS.labels("shipped").inc(count)
                if after.segment != cursor.segment:
                    self.spool.drop_shipped(shipped)  # a segment was read to its end
                cursor = after
                self.shipped_seq = shipped
                AUDIT_SPOOL_BEHIND.set(max(0, durable.seq - shipped))
                if failures:
                    log.info("audit sink is back: shipping %s from seq %d", self.writer, shipped)
                failures = 0
                if runs and len(runs[-1][1]) >= _BATCH_BYTES // 2:
                    continue  # catching up: the next shipment at once
                self._draining.wait(SHIP_EVERY)
            except Exception as exc:  # the sink is down or refused: the spool keeps everything
                AUDIT_SINK_ERRORS.inc()
                if failures == 0:
                    log.warning("audit sink unavailable (%s); spooling locally", type(exc).__name__)
                failures += 1
                shipped = None
                if sink is not None:
                    _close(sink)
                    sink = None
                self._stopping.wait(_RETRY)
        if sink is not None:
            _close(sink)


def _meta() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": os.uname().nodename, "since": round(time.time(), 3)}


def _close(sink: Sink) -> None:
    close = getattr(sink, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: S110 - closing a broken connection may fail too
            pass
