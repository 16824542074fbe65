"""The shipper: what a spool holds on disk (fsync'd) → the sink, in order, idempotent by seq.

It runs as a process of its own beside each service process (`python -m extauthz.audit.shipper
<spool dir>`), so sending records over the network costs the service neither CPU nor its GIL;
tests run the same loop in a thread. It ignores SIGTERM and SIGINT (a process group's stop must
not cut its drain short) and ends when its stdin closes — when the service closes it after its
own drain, or dies — after one last attempt to ship what is durable (`FINAL_DRAIN` seconds).
It learns how far the spool is durable from the spool's `durable` file and reports its
progress in `shipped`.
While the sink is down it retries every half second; the spool keeps everything meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from extauthz.audit.sink import Sink
from extauthz.audit.spool import Cursor, Spool

log = logging.getLogger(__name__)

RETRY = 0.5  # seconds between attempts while the sink is down
# Seconds records gather once the shipper has caught up: fewer, larger shipments. The store
# lags the spool by about this much (plus the fsync interval).
SHIP_EVERY = 0.1
# Most bytes one shipment carries: Redis spends ~1.8 µs per record on one (measured), time a
# decision's own Redis call may wait behind; 64 KiB (~90 records) holds it to ~0.2 ms.
BATCH_BYTES = 64 * 1024


FINAL_DRAIN = 2.0


class Shipper:
    def __init__(
        self,
        spool: Spool,
        sink: Callable[[], Sink],
        stop: threading.Event | None = None,
        final_drain: float = 0.0,
    ) -> None:
        self._spool = spool
        self._sink_factory = sink
        self._stop = stop or threading.Event()
        self._final_drain = final_drain

    def _going_on(self, shipped: int | None, durable: int) -> bool:
        if not self._stop.is_set():
            return True
        if self._deadline is None:
            self._deadline = time.monotonic() + self._final_drain
        return (shipped is None or shipped < durable) and time.monotonic() < self._deadline

    def run(self) -> None:
        spool = self._spool
        sink: Sink | None = None
        shipped: int | None = None  # None: ask the sink
        cursor = Cursor(0, 0)
        failures = errors = 0
        self._deadline: float | None = None
        while self._going_on(shipped, spool.read_durable().seq):
            durable = spool.read_durable()
            try:
                if sink is None:
                    sink = self._sink_factory()
                if shipped is None:
                    shipped = sink.last_seq(spool.writer)
                    sink.register(spool.writer, _meta())
                    cursor = spool.locate(shipped)
                    spool.drop_shipped(shipped)
                    spool.write_status(shipped, errors)
                runs, after = spool.read(cursor, durable, BATCH_BYTES)
                if runs and runs[0][0] <= shipped:  # only after a re-locate: skip what it has
                    runs = spool.runs(b"".join(data for _, data in runs), above=shipped)
                for first, data in runs:
                    if first != shipped + 1:
                        log.error(
                            "audit: spool of %s lacks seq %d..%d (the sink will show a gap)",
                            spool.writer,
                            shipped + 1,
                            first - 1,
                        )
                    sink.append(spool.writer, first, data)
                    shipped = first + data.count(b"\n") - 1
                if after.segment != cursor.segment:
                    spool.drop_shipped(shipped)  # a segment was read to its end
                cursor = after
                if runs:
                    spool.write_status(shipped, errors)
                if failures:
                    log.info("audit sink is back: shipping %s from seq %d", spool.writer, shipped)
                failures = 0
                if runs and len(runs[-1][1]) >= BATCH_BYTES // 2 or self._stop.is_set():
                    continue  # catching up (or a last drain): the next shipment at once
                self._stop.wait(SHIP_EVERY)
            except Exception as exc:  # the sink is down or refused: the spool keeps everything
                errors += 1
                if failures == 0:
                    log.warning("audit sink unavailable (%s); spooling locally", type(exc).__name__)
                failures += 1
                if shipped is not None:
                    spool.write_status(shipped, errors)
                shipped = None
                if sink is not None:
                    _close(sink)
                    sink = None
                if self._stop.is_set():
                    time.sleep(0.1)  # a last drain: retry sooner, within its deadline
                else:
                    self._stop.wait(RETRY)
        if sink is not None:
            _close(sink)


def spawn(spool_dir: Path, settings_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The shipper process of one spool, started by the service process that writes it, with
    the EXTAUTHZ_* settings it needs (the sink's) over the inherited environment. It ends when
    its stdin (held by the service) closes."""
    return subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "extauthz.audit.shipper", str(spool_dir)],
        stdin=subprocess.PIPE,
        env={**os.environ, **settings_env},
    )


def _meta() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": os.uname().nodename, "since": round(time.time(), 3)}


def _close(sink: Sink) -> None:
    close = getattr(sink, "close", None)
    if close is not None:
        try:
            close()
        except Exception:  # noqa: S110 - closing a broken connection may fail too
            pass


def main(argv: list[str]) -> None:
    from extauthz.audit.sink import RedisStreamSink, sync_redis_client
    from extauthz.settings import load_settings

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # the service says when: its stdin closes
    stop = threading.Event()

    def watch_parent() -> None:
        sys.stdin.buffer.read()  # returns at EOF: the service closed it, or died
        stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    spool = Spool(Path(argv[0]), "", settings.audit_segment_bytes)
    spool.attach()

    def sink() -> Sink:
        return RedisStreamSink(sync_redis_client(settings, settings.audit_sink_timeout))

    Shipper(spool, sink, stop, final_drain=FINAL_DRAIN).run()


if __name__ == "__main__":
    main(sys.argv[1:])
