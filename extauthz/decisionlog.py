"""One structured JSON line per decision, written off the request path (queue + thread).

Never carries a credential: only key ids, subjects and reason codes. On the request path a
decision costs one dict and one orjson call; the writer thread batches whatever has queued into
one write and one flush at most every FLUSH_INTERVAL, and `stop()` writes everything still
queued before it returns (SIGKILL loses at most what queued since the last write).

With an audit trail (`extauthz/audit/`), the same thread hands each batch to it after writing
the log: chaining, spooling and fsync stay off the request path.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from typing import IO, Any, Protocol

import orjson

from extauthz.types import Decision, RequestView

log = logging.getLogger(__name__)

_STOP = b""  # the writer's sentinel: a record is never empty
_NOTE = b'{"kind":'  # audit-only records begin so; decision records never do
_BATCH = 4096  # most lines one write carries
# The writer sleeps this long between writes, so it wakes ~20 times a second rather than once
# per decision (a thread wake-up and the GIL hand-off per decision cost the event loop).
FLUSH_INTERVAL = 0.05


class AuditTrail(Protocol):
    """What the writer thread feeds (extauthz.audit.writer.AuditWriter)."""

    wake_interval: float  # seconds an idle writer thread waits before calling write([])
    refusing: bool  # the trail cannot record and must: decisions are refused meanwhile

    def open(self) -> None: ...
    def write(self, records: list[bytes]) -> None: ...
    def close(self) -> None: ...


class DecisionLog:
    def __init__(
        self,
        target: str = "-",
        flush_interval: float = FLUSH_INTERVAL,
        audit: AuditTrail | None = None,
    ) -> None:
        self._target = target
        self._audit = audit
        self._idle_wake = audit.wake_interval if audit is not None else None
        self._interval = flush_interval
        self._stopping = threading.Event()
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def start(self) -> None:
        if self._thread is None:
            if self._audit is not None:
                self._audit.open()
            self._stopping.clear()
            self._thread = threading.Thread(
                target=self._write_forever, name="decision-log", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Write every queued record, close the file, and return."""
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
            if self._audit is not None:
                self._audit.close()

    @property
    def refusing(self) -> bool:
        """The audit trail cannot make records durable and is required to (a full disk, with
        EXTAUTHZ_AUDIT_REQUIRED): the handler refuses every decision until it can again."""
        return self._audit is not None and self._audit.refusing

    def record(self, view: RequestView, decision: Decision, duration_ns: int) -> None:
        self._queue.put(
            orjson.dumps(decision_record(view, decision, duration_ns, self._pid)) + b"\n"
        )

    def record_event(self, event: dict[str, Any]) -> None:
        """A line that is not a decision (e.g. the response path's `upstream_error`): the same
        file, keyed by the request id it belongs to."""
        self._queue.put(orjson.dumps({**event, "worker": self._pid}) + b"\n")

    def note(self, doc: dict[str, Any]) -> None:
        """A record for the audit trail only (e.g. a policy revision), not for the log file."""
        if self._audit is not None:
            self._queue.put(orjson.dumps(doc) + b"\n")

    def _write_forever(self) -> None:
        out: IO[bytes] = (
            sys.stderr.buffer if self._target == "-" else open(self._target, "ab")  # noqa: SIM115
        )
        try:
            stopping = False
            while not stopping:
                try:  # idle: wake now and then, so the audit trail can sign its head
                    batch = [self._queue.get(timeout=self._idle_wake)]
                except queue.Empty:
                    batch = []
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if _STOP in batch:
                    stopping = True
                    batch = [line for line in batch if line]
                    while True:  # records queued after stop() was called still land
                        try:
                            line = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if line:
                            batch.append(line)
                plain = [line for line in batch if not line.startswith(_NOTE)]
                if plain:
                    try:
                        out.write(b"".join(plain))
                        out.flush()
                    except OSError:  # e.g. a full disk: the thread (and the audit trail) go on
                        log.exception("decision log write failed; %d records lost", len(plain))
                if self._audit is not None:
                    try:
                        self._audit.write(batch)
                    except Exception:  # the log thread must live on; the writer says why
                        log.exception("audit write failed")
                if not stopping:
                    self._stopping.wait(self._interval)
        finally:
            if out is not sys.stderr.buffer:
                out.close()


def decision_record(
    view: RequestView, decision: Decision, duration_ns: int, worker: int | None = None
) -> dict[str, Any]:
    principal, policy = decision.principal, decision.policy
    return {
        "ts": round(time.time(), 6),
        "decision_id": decision.decision_id,
        "request_id": view.request_id,
        "status": int(decision.status),
        "reason": decision.reason.value,
        "policy_reason": policy.reason if policy else None,
        "opa_decision_id": (policy.decision_id or None) if policy else None,
        "policy_source": policy.source if policy else None,
        "policy_revision": (policy.revision or None) if policy else None,
        "subject": principal.subject if principal else None,
        "credential": principal.credential if principal else None,
        "credential_id": principal.credential_id if principal else None,
        "device_trust": principal.device.trust
        if principal and principal.device.thumbprint
        else None,
        "device": (principal.device.thumbprint or None) if principal else None,
        "method": view.method,
        "path": view.path,
        "model": view.route.name or None,
        "action": view.route.action or None,
        "source_ip": view.source_ip,
        "retry_after": decision.limits.retry_after
        if decision.limits and not decision.limits.allowed
        else None,
        "detail": decision.extra.get("detail") or None,
        "duration_us": duration_ns // 1000,
        # with `serve --workers N`, which process decided
        "worker": worker if worker is not None else os.getpid(),
    }
