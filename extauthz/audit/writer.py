"""One process's audit writer: chain → spool (fsync'd in groups) → shipper → sink.

The decision log's writer thread hands each batch of records to `write()` (one batch per flush
interval), which chains them and appends them to the spool (then they are in the kernel: a
killed process cannot lose them), fsyncs at most every `fsync_interval` (groups of batches: a
crashed host loses at most that), and signs a checkpoint every `checkpoint_interval` seconds.
The shipper (`shipper.py`: a process of its own in the service, a thread in tests) sends what
is fsync'd to the sink, in order: while the sink is down the spool fills, after it drains,
idempotent by seq. Nothing here runs on the request path.

Losses: SIGTERM/SIGINT none (close() writes, fsyncs and signs everything queued and waits up to
`drain_timeout` for the shipper; the rest stays in the spool for the next start). SIGKILL: the
records queued since the last batch (one flush interval, plus the time of the write itself and
of an fsync when one was due).
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extauthz.audit.chain import Chain, key_id
from extauthz.audit.shipper import Shipper, spawn
from extauthz.audit.sink import Sink
from extauthz.audit.spool import Spool, SpoolLocked
from extauthz.metrics import AUDIT_RECORDS, AUDIT_SINK_ERRORS, AUDIT_SPOOL_BEHIND

log = logging.getLogger(__name__)


class AuditWriter:
    def __init__(
        self,
        spool: Spool,
        key: Ed25519PrivateKey,
        ship: dict[str, str] | Callable[[], Sink] | None,
        checkpoint_interval: float = 2.0,
        drain_timeout: float = 3.0,
        fsync_interval: float = 0.25,
        max_pending: int = 100_000,
        required: bool = True,
    ) -> None:
        self.spool = spool
        self._key = key
        self._kid = key_id(key.public_key())
        # a dict: a shipper process with these EXTAUTHZ_* settings; a sink factory: a thread
        self._ship = ship
        self.checkpoint_interval = checkpoint_interval
        self._drain_timeout = drain_timeout
        self._fsync_interval = fsync_interval
        self._last_fsync = 0.0
        self._written = False  # appended since the last fsync
        self._chain: Chain | None = None
        self._pending: list[bytes] = []  # chained lines a failed write still owes the spool
        # while the spool cannot be written (e.g. a full disk) at most this many chained lines
        # are held in memory; records beyond are dropped unchained, counted, and a `lost`
        # record in the chain says how many and when, once the spool takes writes again
        self._max_pending = max_pending
        # required: while the spool cannot be written, the service refuses decisions (it reads
        # `refusing`) rather than serve what could not be made durable
        self._required = required
        self.refusing = False
        self._lost = 0
        self._lost_since = 0.0
        self._last_checkpoint = 0.0
        self._signed_seq = 0
        self._stop_shipper = threading.Event()
        self._thread: threading.Thread | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self.shipped_seq = 0  # what the sink holds, as the shipper last said
        self._sink_errors = 0
        self.writer_cpu = 0.0  # this writer's thread CPU seconds (precise, unlike /proc ticks)
        self.adopt: Callable[[], list[str]] | None = None  # run once after open(), off-thread
        # a previous process may still be draining this spool: wait for its lock this long
        self.lock_wait = drain_timeout + 5.0

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
        seq, head = self.spool.open(wait=self.lock_wait)
        self._chain = Chain(self.spool.writer, seq, head)
        opened = {"kind": "open", "ts": round(time.time(), 6), "pid": os.getpid()}
        self._append([self._chain.link(orjson.dumps(opened))])
        self._sign()
        self.spool.sync()
        self.shipped_seq, self._sink_errors = self.spool.read_status()
        if isinstance(self._ship, dict):
            self._process = spawn(self.spool.directory, self._ship)
        elif self._ship is not None:
            self._stop_shipper.clear()
            shipper = Shipper(self.spool, self._ship, self._stop_shipper)
            self._thread = threading.Thread(target=shipper.run, name="audit-shipper", daemon=True)
            self._thread.start()
        log.info("audit writer %s resumes at seq %d", self.writer, seq)
        if self.adopt is not None:
            threading.Thread(target=self._adopt, name="audit-adopt", daemon=True).start()

    def _adopt(self) -> None:
        assert self.adopt is not None
        try:
            for writer in self.adopt():
                log.info("audit: shipped the spool of %s (no worker runs it now)", writer)
        except Exception:
            log.exception("audit: adopting an orphaned spool failed")

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
        records = [r for r in records if r]
        if self._pending:
            self._append([])  # what is held first: the spool may take writes again
        if self._pending:  # still failing (e.g. a full disk) and memory bounded
            room = max(self._max_pending - len(self._pending), 0)
            if len(records) > room:
                if not self._lost:
                    self._lost_since = time.time()
                    log.error("audit spool still failing: dropping records beyond %d held", room)
                self._lost += len(records) - room
                AUDIT_RECORDS.labels("lost").inc(len(records) - room)
                records = records[:room]
        elif self._lost:  # said in the chain itself, before anything newer
            lost = {
                "kind": "lost",
                "ts": round(time.time(), 6),
                "records": self._lost,
                "since": round(self._lost_since, 6),
                "cause": "the spool could not be written; records beyond the memory bound",
            }
            self._lost = 0
            self._append([chain.link(orjson.dumps(lost))])
        lines = [chain.link(r[:-1] if r.endswith(b"\n") else r) for r in records]
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
        self._observe_shipper()

    def _observe_shipper(self) -> None:
        """The shipper's progress (its status file) → metrics."""
        shipped, errors = self.spool.read_status()
        if shipped > self.shipped_seq:
            AUDIT_RECORDS.labels("shipped").inc(shipped - self.shipped_seq)
        if errors > self._sink_errors:
            AUDIT_SINK_ERRORS.inc(errors - self._sink_errors)
        self.shipped_seq, self._sink_errors = shipped, errors
        if self._chain is not None:
            AUDIT_SPOOL_BEHIND.set(max(0, self._chain.seq - shipped))

    def close(self) -> None:
        """Sign the head, fsync, give the shipper `drain_timeout` to empty the spool, unlock."""
        if self._chain is None:
            return
        if self._chain.seq != self._signed_seq:
            self._sign()
        self.spool.sync()
        shipping = self._process is not None or self._thread is not None
        if shipping:
            deadline = time.monotonic() + self._drain_timeout
            while self.spool.read_status()[0] < self._chain.seq and time.monotonic() < deadline:
                time.sleep(0.02)
        self._observe_shipper()
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()  # its signal to finish
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        if self._thread is not None:
            self._stop_shipper.set()
            self._thread.join()
            self._thread = None
        if shipping and self.shipped_seq < self._chain.seq:
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
            self.refusing = self._required
            return
        self._pending = []
        self.refusing = False


def adopt_orphans(directory: Path, in_use: int, make: Callable[[Path], AuditWriter]) -> list[str]:
    """Ship the spools no worker of this service will open (`w<i>`, i >= `in_use`: left by a
    run with more workers). Each is opened (its chain gets an `open` record and a checkpoint over
    what its last process left unsigned), given `drain_timeout` to ship, and closed. The
    writers adopted; a spool another process holds is left alone."""
    adopted = []
    for path in sorted(directory.glob("w*")):
        index = path.name[1:]
        if not index.isdigit() or int(index) < in_use or not any(path.glob("*.seg")):
            continue
        writer = make(path)
        writer.lock_wait = 0.0  # held: someone runs it
        try:
            writer.open()
        except SpoolLocked:
            continue
        writer.close()
        adopted.append(writer.writer)
    return adopted
