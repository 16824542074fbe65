"""Retention of the central store: the oldest shipments of each chain move to archive files.

Each writer's stream grows by ~0.7 KB per decision; kept forever in Redis it is memory that
only grows. `extauthz audit archive` moves every whole stream entry older than a cut-off into
a file, `<archive dir>/<writer>/<first seq>-<last seq>.jsonl` (the records as they are, chain
fields and all), and leaves an anchor behind in the store (`AuditBaseFields`: the last archived
record's seq and hash, the file's name and SHA-256):

1. the entries are read and checked from the current anchor (every link, seq, signature): a
   chain that does not verify is not archived — evidence of tampering is never moved out of
   sight; the command names the problem and exits non-zero;
2. they are written to a temporary file, fsync'd, renamed into place, the directory fsync'd;
3. one Lua call moves the anchor and trims the stream (`XTRIM MINID`) — only if the anchor is
   still the one step 1 started from (two archivers never both trim);
4. the move is an operator action on the `ops` chain (who, which writer, seqs, file, SHA-256).

The newest entry of a stream is never archived (appends and the ops chain read their head from
it). `audit verify` then checks the store from each anchor; `audit verify --archive DIR` checks
every chain from its first record: the archive files, then the store, joined at the anchor (an
edited, missing or shortened archive file breaks a link there).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extauthz.audit.chain import record_hash
from extauthz.audit.sink import _field, _seq_of, entry_last_seq, read_base, stream_key
from extauthz.audit.spool import fsync_dir
from extauthz.audit.verify import SUFFIX, Verifier
from extauthz.store.schema import audit_base, render_lua

# KEYS: the stream, its base. ARGV: the base seq the caller read, the new seq, head, file,
# sha256, ts. Returns the entries trimmed, or -1 if another archiver moved the base meanwhile.
TRIM_LUA = render_lua("""
local current = tonumber(redis.call('HGET', KEYS[2], '${base_seq}') or '0')
if current ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[2], '${base_seq}', ARGV[2], '${base_head}', ARGV[3],
  '${base_file}', ARGV[4], '${base_sha256}', ARGV[5], '${base_ts}', ARGV[6])
return redis.call('XTRIM', KEYS[1], 'MINID', (tonumber(ARGV[2]) + 1) .. '-0')
""")


@dataclass(frozen=True)
class Archived:
    writer: str
    first_seq: int
    last_seq: int
    records: int
    entries: int
    path: Path
    sha256: str


class ArchiveRefused(RuntimeError):
    """The chain did not verify from its anchor (the problem says where), or another archiver
    moved the anchor meanwhile: nothing was trimmed."""


def _entries_before(
    redis: Any, writer: str, cutoff: float, max_records: int, chunk: int = 200
) -> Iterator[tuple[int, bytes]]:
    """(first seq, lines) of the oldest entries whose newest record is older than `cutoff`,
    never the stream's newest entry, at most about `max_records` records."""
    key = stream_key(writer)
    newest = redis.xrevrange(key, "+", "-", count=1)
    if not newest:
        return
    newest_id = newest[0][0]
    start: str = "-"
    taken = 0
    while True:
        entries = redis.xrange(key, start, "+", count=chunk)
        for entry_id, fields in entries:
            if entry_id == newest_id or taken >= max_records:
                return
            data = _field(fields, "r")
            last = data[data.rfind(b"\n", 0, len(data) - 1) + 1 :]
            if float(orjson.loads(last).get("ts", 0)) > cutoff:
                return
            taken += data.count(b"\n")
            yield _seq_of(entry_id), data
        if len(entries) < chunk:
            return
        start = f"{entry_last_seq(*entries[-1])}-1"


def archive_writer(
    redis: Any,
    writer: str,
    out_dir: Path,
    keys: dict[str, Ed25519PublicKey],
    older_than: float,
    max_records: int = 1_000_000,
    now: float | None = None,
) -> Archived | None:
    """Move `writer`'s entries older than `older_than` seconds into one archive file; None if
    there is nothing to move. ArchiveRefused if the chain does not verify or the anchor moved."""
    cutoff = (time.time() if now is None else now) - older_than
    base = read_base(redis, writer)
    verifier = Verifier(keys)
    verifier.anchor(writer, base.seq, base.head)
    directory = out_dir / writer
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = directory / f".archiving-{os.getpid()}{SUFFIX}"
    digest = hashlib.sha256()
    first = last = records = entries = 0
    head = base.head
    try:
        with open(tmp, "wb") as out:
            for first_seq, data in _entries_before(redis, writer, cutoff, max_records):
                for line in data.splitlines():
                    problem = verifier.feed(line)
                    if problem is not None:
                        raise ArchiveRefused(f"{writer}: {problem}")
                    head = record_hash(line)
                out.write(data)
                digest.update(data)
                first = first or first_seq
                last = first_seq + data.count(b"\n") - 1
                records += data.count(b"\n")
                entries += 1
            out.flush()
            os.fsync(out.fileno())
        if not entries:
            return None
        path = directory / f"{first:020d}-{last:020d}{SUFFIX}"
        os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        tmp.unlink(missing_ok=True)
    sha = digest.hexdigest()
    trimmed = int(
        redis.eval(
            TRIM_LUA,
            2,
            stream_key(writer),
            audit_base(writer),
            base.seq,
            last,
            head,
            path.name,
            sha,
            round(time.time(), 6),
        )  # fmt: skip
    )
    if trimmed < 0:
        path.unlink(missing_ok=True)
        raise ArchiveRefused(f"{writer}: another archiver moved the anchor; nothing trimmed")
    return Archived(writer, first, last, records, trimmed, path, sha)
