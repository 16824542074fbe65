"""Checking chains (`extauthz audit verify`), exporting them, finding one decision in them.

A `Verifier` takes records in order (interleaved writers are fine) and stops at the first
problem, which names the writer, the seq and the line: a changed record (`broken_link`), a bad
or unknown signature, a missing record (`sequence_gap`), records out of order (`reordered`),
records after the last signed checkpoint (`unsigned_tail`: a truncation, an append, or a writer
that has not signed its newest records yet), or a line that is not a record (`malformed`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extauthz.audit.chain import GENESIS, checkpoint_message
from extauthz.audit.sink import entry_before, read_base, read_stream, stream_key, writers

_TS = re.compile(rb'"ts":([0-9.]+)')
SUFFIX = ".jsonl"  # archive files (extauthz/audit/archive.py)

PROBLEMS = (
    "malformed",
    "broken_link",
    "bad_signature",
    "unknown_key",
    "sequence_gap",
    "reordered",
    "unsigned_tail",
    "missing_stream",
)


@dataclass(frozen=True)
class Problem:
    kind: str  # one of PROBLEMS
    writer: str
    seq: int | None  # the first bad record's
    line: int | None  # its line in the file (1-based), or None for the central store
    detail: str

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return f"{self.kind}: writer {self.writer} seq {self.seq}{where}: {self.detail}"


@dataclass
class _Writer:
    seq: int = 0
    head: str = GENESIS
    line: int | None = None
    signed_seq: int = 0
    signed_line: int | None = None
    records: int = 0
    checkpoints: int = 0
    anchored: int = 0  # the chain is checked from after this seq (records before: archived)


@dataclass
class Report:
    writers: dict[str, _Writer] = field(default_factory=dict)
    problem: Problem | None = None
    records: int = 0

    @property
    def ok(self) -> bool:
        return self.problem is None


class Verifier:
    def __init__(self, keys: dict[str, Ed25519PublicKey]) -> None:
        self._keys = keys
        self.report = Report()

    def anchor(self, writer: str, seq: int, head: str) -> None:
        """Begin `writer`'s chain after record `seq` with hash `head` (a trimmed store's base:
        what came before is archived). The anchor counts as signed: every later checkpoint
        covers it, and an unsigned tail is still named."""
        if seq:
            self.report.writers[writer] = _Writer(seq=seq, head=head, signed_seq=seq, anchored=seq)

    def feed(self, line: bytes, line_no: int | None = None) -> Problem | None:
        """Check one record against its writer's chain; the first problem sticks."""
        try:
            doc = orjson.loads(line)
            if "anchor" in doc and "seq" not in doc:  # an export of a trimmed chain begins so
                return self._anchor_line(doc, line_no)
            writer, seq, prev = doc["w"], doc["seq"], doc["prev"]
            if not (isinstance(writer, str) and isinstance(seq, int) and isinstance(prev, str)):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return self._fail("malformed", "?", None, line_no, "not an audit record")
        st = self.report.writers.get(writer)
        if st is None:
            st = self.report.writers[writer] = _Writer()
        if seq != st.seq + 1:
            if seq <= st.seq:
                return self._fail(
                    "reordered", writer, seq, line_no, f"seq {seq} after seq {st.seq}"
                )
            return self._fail(
                "sequence_gap",
                writer,
                st.seq + 1,
                line_no,
                f"missing: seq {st.seq + 1}..{seq - 1} (seq {seq} follows seq {st.seq})",
            )
        if prev != st.head:
            if st.seq == 0:
                return self._fail("broken_link", writer, seq, line_no, "first record's link")
            return self._fail(
                "broken_link",
                writer,
                st.seq,
                st.line,
                f"changed: its hash is not the one seq {seq} links to (or seq {seq}'s link "
                "was changed)",
            )
        if doc.get("kind") == "checkpoint":
            problem = self._checkpoint(doc, writer, seq, prev, line_no)
            if problem is not None:
                return problem
            st.signed_seq, st.signed_line = seq, line_no
            st.checkpoints += 1
        st.seq, st.head, st.line = seq, hashlib.sha256(line).hexdigest(), line_no
        st.records += 1
        self.report.records += 1
        return None

    def finish(self, allow_unsigned_tail: bool = False) -> Report:
        """After the last record: records a checkpoint does not cover are a problem unless
        `allow_unsigned_tail` (a live writer's newest records)."""
        if self.report.problem is None and not allow_unsigned_tail:
            for writer, st in self.report.writers.items():
                if st.seq > st.signed_seq:
                    self._fail(
                        "unsigned_tail",
                        writer,
                        st.signed_seq + 1,
                        None,
                        f"seq {st.signed_seq + 1}..{st.seq} follow the last checkpoint "
                        f"(seq {st.signed_seq}): truncated or appended after it",
                    )
                    break
        return self.report

    def _anchor_line(self, doc: dict[str, Any], line_no: int | None) -> Problem | None:
        writer, seq, head = doc.get("w"), doc.get("anchor"), doc.get("head")
        if not (isinstance(writer, str) and isinstance(seq, int) and isinstance(head, str)):
            return self._fail("malformed", "?", None, line_no, "not an anchor")
        if writer in self.report.writers:
            return self._fail("malformed", writer, seq, line_no, "an anchor after records")
        self.anchor(writer, seq, head)
        return None

    def _checkpoint(
        self, doc: dict[str, Any], writer: str, seq: int, prev: str, line_no: int | None
    ) -> Problem | None:
        key = self._keys.get(str(doc.get("kid")))
        if key is None:
            return self._fail("unknown_key", writer, seq, line_no, f"kid {doc.get('kid')!r}")
        try:
            if doc.get("head_seq") != seq - 1:
                raise InvalidSignature
            key.verify(
                base64.b64decode(doc["sig"]), checkpoint_message(writer, seq, prev, doc["ts"])
            )
        except (InvalidSignature, KeyError, TypeError, ValueError):
            return self._fail("bad_signature", writer, seq, line_no, "checkpoint signature")
        return None

    def _fail(
        self, kind: str, writer: str, seq: int | None, line_no: int | None, detail: str
    ) -> Problem:
        problem = Problem(kind, writer, seq, line_no, detail)
        if self.report.problem is None:
            self.report.problem = problem
        return problem


def verify_lines(
    lines: Sequence[bytes], keys: dict[str, Ed25519PublicKey], allow_unsigned_tail: bool = False
) -> Report:
    """Verify an export (every line in memory, so a jump can be told from a reordering)."""
    verifier = Verifier(keys)
    for i, line in enumerate(lines):
        problem = verifier.feed(line, i + 1)
        if problem is not None:
            if problem.kind == "sequence_gap" and problem.seq is not None:
                later = _find_later(lines, i + 1, problem.writer, problem.seq)
                if later is not None:
                    verifier.report.problem = Problem(
                        "reordered",
                        problem.writer,
                        problem.seq,
                        later,
                        f"seq {problem.seq} appears later, at line {later}",
                    )
            return verifier.report
    return verifier.finish(allow_unsigned_tail)


def _find_later(lines: Sequence[bytes], start: int, writer: str, seq: int) -> int | None:
    needle = b',"seq":%d,' % seq
    for j in range(start, len(lines)):
        if needle in lines[j]:
            doc = orjson.loads(lines[j])
            if doc.get("w") == writer and doc.get("seq") == seq:
                return j + 1
    return None


def read_file(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().splitlines() if line.strip()]


def verify_store(
    redis: Any,
    keys: dict[str, Ed25519PublicKey],
    allow_unsigned_tail: bool = True,
    archive_dir: Path | None = None,
) -> Report:
    """Every writer the store names: its whole stream, in order, from its anchor (what an
    archive run left, `archive.read_base`); with `archive_dir`, from its first record: the
    archive files first, then the stream, which must go on exactly where they end."""
    verifier = Verifier(keys)
    names = writers(redis)
    if archive_dir is not None:
        missing = sorted(set(archived_writers(archive_dir)) - set(names))
        if missing:
            verifier._fail("missing_stream", missing[0], None, None, "archived, not in the store")
            return verifier.report
    for writer in names:
        if not redis.exists(stream_key(writer)):
            verifier._fail("missing_stream", writer, None, None, "named, but its stream is gone")
            return verifier.report
        if archive_dir is None:
            base = read_base(redis, writer)
            verifier.anchor(writer, base.seq, base.head)
        else:
            for line in archived_lines(archive_dir, writer):
                if verifier.feed(line) is not None:
                    problem = verifier.report.problem
                    assert problem is not None
                    verifier.report.problem = Problem(
                        problem.kind, problem.writer, problem.seq, None,
                        problem.detail + f" (in the archive {archive_dir / writer})",
                    )  # fmt: skip
                    return verifier.report
        for seq, line in read_stream(redis, writer):
            problem = verifier.feed(line)
            if problem is not None:
                return verifier.report
            st = verifier.report.writers.get(writer)
            if st is None or st.seq != seq:  # a record moved between streams or ids
                verifier._fail("malformed", writer, seq, None, "stream entry and record differ")
                return verifier.report
    return verifier.finish(allow_unsigned_tail)


def export(redis: Any, out: IO[bytes], include_unsigned: bool = False) -> dict[str, int]:
    """Every writer's records, writer after writer, as JSON lines; by default each chain up
    to its last signed checkpoint (what a verifier can vouch for). Records per writer."""
    counts: dict[str, int] = {}
    for writer in writers(redis):
        tail: list[bytes] = []
        written = 0
        base = read_base(redis, writer)
        if base.seq:  # the records before it are archived: say where this chain begins
            out.write(orjson.dumps({"w": writer, "anchor": base.seq, "head": base.head}) + b"\n")
        for _seq, line in read_stream(redis, writer):
            tail.append(line)
            if b'"kind":"checkpoint"' in line:
                out.write(b"\n".join(tail) + b"\n")
                written += len(tail)
                tail = []
        if include_unsigned and tail:
            out.write(b"\n".join(tail) + b"\n")
            written += len(tail)
        counts[writer] = written
    return counts


def search(
    redis: Any,
    request_id: str,
    archive_dir: Path | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Decision records whose request_id is `request_id`: a scan of every stream (and of the
    archive files first when `archive_dir` is given). With `since`, each stream is read from
    the entry before that time (found by binary search), and with `until` only up to it."""
    needle = b'"request_id":' + orjson.dumps(request_id)

    def matching(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            if needle in line:
                doc = orjson.loads(line)
                if doc.get("request_id") == request_id:
                    yield doc

    if archive_dir is not None:
        for writer in archived_writers(archive_dir):
            yield from matching(archived_lines(archive_dir, writer))
    for writer in writers(redis):
        start = "-" if since is None else entry_before(redis, writer, since)
        lines = (line for _seq, line in read_stream(redis, writer, start=start))
        if since is not None or until is not None:
            lines = _window(lines, since, until)
        yield from matching(lines)


def _window(lines: Iterable[bytes], since: float | None, until: float | None) -> Iterator[bytes]:
    """The lines stamped from `since` to `until`; stops at the first one after `until` (one
    writer's records are in time order)."""
    for line in lines:
        found = _TS.search(line)
        if found is None:
            continue
        ts = float(found.group(1))
        if until is not None and ts > until:
            return
        if since is None or ts >= since:
            yield line


def lines_matching(path: Path, needles: Iterable[str]) -> list[str]:
    """Lines of a log file that contain every one of `needles` (missing file: none)."""
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip("\n") for line in f if all(n in line for n in needles)]
    except OSError:
        return []


# ---- the archive directory (`audit archive` writes it; verify and search read it)
def archive_files(out_dir: Path, writer: str) -> list[Path]:
    """A writer's archive files, oldest first."""
    directory = out_dir / writer
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f"*{SUFFIX}") if p.name[:1].isdigit())


def archived_writers(out_dir: Path) -> list[str]:
    if not out_dir.is_dir():
        return []
    return sorted(
        p.name for p in out_dir.iterdir() if p.is_dir() and archive_files(out_dir, p.name)
    )


def archived_lines(out_dir: Path, writer: str) -> Iterator[bytes]:
    for path in archive_files(out_dir, writer):
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip(b"\n")
