"""The local durable spool of one audit writer: segment files of chained lines.

Layout of a writer's directory: `writer` (its id, made once), `lock` (flock: one process per
spool), and `<first seq, 20 digits>.seg` files of newline-terminated records. The writer thread
appends and fsyncs in groups (`sync()`); the shipper reads only what is durable and deletes a
segment once the sink holds all of it. A line cut short by a crash is removed on reopening.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from extauthz.audit.chain import GENESIS, record_hash

SUFFIX = ".seg"


class SpoolLocked(RuntimeError):
    pass


@dataclass(frozen=True)
class Cursor:
    """A place in the spool: a segment (its first seq) and a byte offset in it."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Durable:
    """How far the spool is on disk (fsync'd): the active segment and the byte count in it."""

    segment: int  # first seq of the active segment
    offset: int
    seq: int  # the last durable record's


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}{SUFFIX}"


def segments(directory: Path) -> list[int]:
    """First seqs of the segment files, oldest first."""
    return sorted(int(p.stem) for p in directory.glob(f"*{SUFFIX}") if p.stem.isdigit())


def parse_seq(line: bytes, prefix_len: int) -> int:
    """The seq of a line of this writer (its fixed prefix is `prefix_len` bytes long)."""
    return int(line[prefix_len : line.index(b",", prefix_len)])


class Spool:
    def __init__(self, directory: Path, writer_prefix: str, segment_bytes: int) -> None:
        self.directory = directory
        self._writer_prefix = writer_prefix
        self._segment_bytes = segment_bytes
        self._lock_fd: int | None = None
        self._marker_fd: int | None = None
        self._fd: int | None = None
        self._segment = 0
        self._size = 0
        self._written_seq = 0
        self._durable = Durable(0, 0, 0)
        self._cond = threading.Condition()
        self.writer = ""
        self._prefix_len = 0

    # ---- opening: lock, writer id, recovery of the chain head
    def open(self, wait: float = 0.0) -> tuple[int, str]:
        """Lock the directory and recover the chain head: (last seq, its hash). A process that
        still holds it (e.g. the previous service, draining) is waited for up to `wait` s."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise SpoolLocked(
                        f"another process holds the audit spool {self.directory}"
                    ) from None
                time.sleep(0.1)
        self._lock_fd = fd
        id_file = self.directory / "writer"
        if not id_file.exists():
            # a new spool is a new chain: an id of its own, so it never collides with an old one
            id_file.write_text(f"{self._writer_prefix}-{secrets.token_hex(4)}\n")
            fsync_dir(self.directory)
        self.writer = id_file.read_text().strip()
        self._prefix_len = len(b'{"w":' + orjson.dumps(self.writer) + b',"seq":')
        seq, head = 0, GENESIS
        existing = segments(self.directory)
        if existing:
            self._segment = existing[-1]
            path = segment_path(self.directory, self._segment)
            data = path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) != len(data):  # a line cut short by a crash: never shipped
                with open(path, "r+b") as f:
                    f.truncate(len(complete))
                    os.fsync(f.fileno())
            lines = complete.splitlines()
            if lines:
                last = lines[-1]
                seq, head = parse_seq(last, self.prefix_len), record_hash(last)
            elif len(existing) > 1:
                last = segment_path(self.directory, existing[-2]).read_bytes().splitlines()[-1]
                seq, head = parse_seq(last, self.prefix_len), record_hash(last)
            self._size = len(complete)
        else:
            self._segment = 1
        self._fd = os.open(
            segment_path(self.directory, self._segment),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o600,
        )
        self._written_seq = seq
        self._durable = Durable(self._segment, self._size, seq)
        self._marker_fd = os.open(self.directory / "durable", os.O_RDWR | os.O_CREAT, 0o600)
        self._mark(self._durable)
        return seq, head

    def attach(self) -> None:
        """For a reader in another process (the shipper): the writer id, no lock, no writes."""
        self.writer = (self.directory / "writer").read_text().strip()
        self._prefix_len = len(b'{"w":' + orjson.dumps(self.writer) + b',"seq":')

    def _mark(self, durable: Durable) -> None:
        """Tell readers in other processes how far the spool is fsync'd (a hint written after
        the fsync, so never ahead of the disk)."""
        text = b"%d %d %d\n" % (durable.segment, durable.offset, durable.seq)
        os.pwrite(self._marker_fd, text.ljust(64), 0)

    def read_durable(self) -> Durable:
        try:
            segment, offset, seq = (self.directory / "durable").read_bytes().split()[:3]
        except (OSError, ValueError):
            return Durable(0, 0, 0)
        return Durable(int(segment), int(offset), int(seq))

    def write_status(self, shipped: int, errors: int) -> None:
        """The shipper's progress: the last seq the sink holds, failed attempts so far."""
        path = self.directory / "shipped"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"%d %d\n" % (shipped, errors))
        os.replace(tmp, path)

    def read_status(self) -> tuple[int, int]:
        try:
            shipped, errors = (self.directory / "shipped").read_bytes().split()[:2]
        except (OSError, ValueError):
            return 0, 0
        return int(shipped), int(errors)

    @property
    def prefix_len(self) -> int:
        return self._prefix_len

    # ---- the writer thread
    def append(self, data: bytes, last_seq: int) -> None:
        """Write whole lines (the last one's seq is `last_seq`); durable after `sync()`."""
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        self._written_seq = last_seq

    def sync(self) -> None:
        """fsync what was appended; rotate to a new segment past the size limit."""
        assert self._fd is not None
        os.fsync(self._fd)
        durable = Durable(self._segment, self._size, self._written_seq)
        if self._size >= self._segment_bytes:
            os.close(self._fd)
            self._segment, self._size = self._written_seq + 1, 0
            self._fd = os.open(
                segment_path(self.directory, self._segment),
                os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                0o600,
            )
            fsync_dir(self.directory)
            durable = Durable(self._segment, 0, self._written_seq)
        self._mark(durable)
        with self._cond:
            self._durable = durable
            self._cond.notify_all()

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._marker_fd is not None:
            os.close(self._marker_fd)
            self._marker_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # ---- the shipper thread
    def durable(self) -> Durable:
        with self._cond:
            return self._durable

    def locate(self, seq: int) -> Cursor:
        """Where the line after `seq` starts (or would start), for the shipper's cursor."""
        firsts = [s for s in segments(self.directory) if s <= seq + 1] or segments(self.directory)
        if not firsts:
            return Cursor(self._segment, 0)
        first = firsts[-1]
        if first > seq:
            return Cursor(first, 0)
        offset = 0
        with open(segment_path(self.directory, first), "rb") as f:
            for line in f:
                if not line.endswith(b"\n") or parse_seq(line, self.prefix_len) > seq:
                    break
                offset += len(line)
        return Cursor(first, offset)

    def read(
        self, cursor: Cursor, durable: Durable, max_bytes: int = 1 << 20
    ) -> tuple[list[tuple[int, bytes]], Cursor]:
        """Durable whole lines from `cursor` on (about `max_bytes`) as runs of consecutive seqs,
        (first seq, newline-terminated lines), and the cursor after them. Normally one run."""
        while True:
            path = segment_path(self.directory, cursor.segment)
            end = durable.offset if cursor.segment == durable.segment else None
            data = b""
            try:
                with open(path, "rb") as f:
                    f.seek(cursor.offset)
                    limit = max_bytes
                    while True:
                        want = limit if end is None else min(limit, end - cursor.offset)
                        if want <= 0:
                            break
                        raw = f.read(want)
                        data = raw[: raw.rfind(b"\n") + 1]
                        if data or len(raw) < want:
                            break
                        f.seek(cursor.offset)  # one line longer than max_bytes: read it whole
                        limit *= 2
            except FileNotFoundError:
                pass
            if data:
                return self.runs(data), Cursor(cursor.segment, cursor.offset + len(data))
            if cursor.segment >= durable.segment:
                return [], cursor
            later = [s for s in segments(self.directory) if s > cursor.segment]
            if not later:
                return [], cursor
            cursor = Cursor(later[0], 0)  # this segment is read to its end: the next one

    def runs(self, data: bytes, above: int = 0) -> list[tuple[int, bytes]]:
        """Newline-terminated lines → runs of consecutive seqs above `above`. The common case
        (one run, nothing to skip) reads two seqs, not every line's."""
        first = parse_seq(data, self.prefix_len)
        last = parse_seq(data[data.rfind(b"\n", 0, len(data) - 1) + 1 :], self.prefix_len)
        if first > above and last - first + 1 == data.count(b"\n"):
            return [(first, data)]
        runs: list[tuple[int, bytes]] = []
        lines: list[bytes] = []
        start = expected = 0
        for line in data.splitlines(keepends=True):
            seq = parse_seq(line, self.prefix_len)
            if seq <= above:
                continue
            if lines and seq != expected:
                runs.append((start, b"".join(lines)))
                lines = []
            if not lines:
                start = seq
            lines.append(line)
            expected = seq + 1
        if lines:
            runs.append((start, b"".join(lines)))
        return runs

    def drop_shipped(self, shipped_seq: int) -> int:
        """Delete segments whose every line the sink holds (never the active one)."""
        durable = self.read_durable()
        firsts = segments(self.directory)
        dropped = 0
        for first, following in zip(firsts, firsts[1:], strict=False):
            if following <= shipped_seq + 1 and following <= durable.segment:
                segment_path(self.directory, first).unlink(missing_ok=True)
                dropped += 1
        return dropped

    def pending_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob(f"*{SUFFIX}"))


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
