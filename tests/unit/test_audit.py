"""The audit trail without services: chain, checkpoints, verifier, spool, writer (a fake sink)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extauthz.audit.chain import GENESIS, Chain, key_id, load_public_key, load_signing_key
from extauthz.audit.spool import Cursor, Spool, SpoolLocked, segments
from extauthz.audit.verify import verify_lines
from extauthz.audit.writer import AuditWriter
from extauthz.decisionlog import DecisionLog

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KID = key_id(KEY.public_key())
KEYS = {KID: KEY.public_key()}


def chain_lines(n: int, writer: str = "h-w0-abc", every: int = 5) -> list[bytes]:
    """n decision-like records with a checkpoint after every `every`, ending in one."""
    chain = Chain(writer)
    lines = []
    for i in range(n):
        lines.append(chain.link(orjson.dumps({"request_id": f"r{i}", "status": 200})))
        if (i + 1) % every == 0 or i == n - 1:
            lines.append(chain.checkpoint(KEY, KID))
    return lines


def problem(lines: Sequence[bytes], **kw: Any) -> str:
    report = verify_lines(lines, KEYS, **kw)
    return str(report.problem) if report.problem else ""


def test_a_chain_verifies_and_links_each_record_to_the_last() -> None:
    lines = chain_lines(12)
    report = verify_lines(lines, KEYS)
    assert report.ok and report.records == len(lines)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert (first["seq"], first["prev"]) == (1, GENESIS)
    assert second["seq"] == 2 and second["prev"] != GENESIS
    assert first["request_id"] == "r0"  # the record's own fields are kept as they were


def test_an_edited_record_is_named() -> None:
    lines = chain_lines(12)
    lines[3] = lines[3].replace(b'"status":200', b'"status":403')
    assert problem(lines).startswith("broken_link: writer h-w0-abc seq 4 (line 4)")


def test_a_deleted_record_is_a_gap_named_by_its_seq() -> None:
    lines = chain_lines(12)
    del lines[3]
    assert problem(lines).startswith("sequence_gap: writer h-w0-abc seq 4 ")


def test_swapped_records_are_a_reordering() -> None:
    lines = chain_lines(12)
    lines[3], lines[4] = lines[4], lines[3]
    assert problem(lines).startswith("reordered: writer h-w0-abc seq 4 (line 5)")


def test_a_record_moved_backwards_is_a_reordering() -> None:
    lines = chain_lines(12)
    lines.insert(8, lines.pop(2))
    assert problem(lines).startswith("reordered: writer h-w0-abc seq 3 ")


def test_a_truncated_file_has_an_unsigned_tail() -> None:
    lines = chain_lines(12, every=5)  # checkpoints after records 5, 10 and 12
    cut = lines[:-1]  # the final checkpoint gone
    assert problem(cut).startswith("unsigned_tail: writer h-w0-abc seq 13")
    assert problem(cut, allow_unsigned_tail=True) == ""


def test_forged_records_after_the_last_checkpoint_are_unsigned() -> None:
    lines = chain_lines(6)
    last = json.loads(lines[-1])
    forger = Chain("h-w0-abc", last["seq"], __import__("hashlib").sha256(lines[-1]).hexdigest())
    lines.append(forger.link(b'{"request_id":"forged","status":200}'))
    assert problem(lines).startswith("unsigned_tail:")


def test_a_checkpoint_signed_by_another_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    chain = Chain("h-w0-abc")
    lines = [chain.link(b'{"a":1}'), chain.checkpoint(other, KID)]  # claims our key id
    assert problem(lines).startswith("bad_signature: writer h-w0-abc seq 2")
    chain = Chain("h-w0-abc")
    lines = [chain.link(b'{"a":1}'), chain.checkpoint(other, key_id(other.public_key()))]
    assert problem(lines).startswith("unknown_key:")


def test_a_rewritten_chain_needs_the_key() -> None:
    """Re-hashing every later record after an edit is easy; re-signing is not."""
    lines = chain_lines(6, every=10)
    docs = [json.loads(line) for line in lines]
    docs[1]["status"] = 403
    chain = Chain("h-w0-abc")
    rebuilt = []
    for doc in docs[:-1]:
        body = {k: v for k, v in doc.items() if k not in ("w", "seq", "prev")}
        rebuilt.append(chain.link(orjson.dumps(body)))
    old = {k: v for k, v in docs[-1].items() if k not in ("w", "seq", "prev")}
    rebuilt.append(chain.link(orjson.dumps(old)))  # the old signature over the old head
    assert problem(rebuilt).startswith("bad_signature:")


def test_writers_interleave_and_each_keeps_its_own_chain() -> None:
    a, b = chain_lines(4, "h-w0-a"), chain_lines(4, "h-w1-b")
    mixed = [line for pair in zip(a, b, strict=False) for line in pair] + a[len(b) :] + b[len(a) :]
    report = verify_lines(mixed, KEYS)
    assert report.ok and set(report.writers) == {"h-w0-a", "h-w1-b"}


def test_a_line_that_is_not_a_record_is_malformed() -> None:
    lines = chain_lines(3)
    lines[1] = b'{"hello":"world"}'
    assert problem(lines).startswith("malformed:")


def test_signing_key_file_is_private_and_has_its_public_half(tmp_path: Path) -> None:
    path = tmp_path / "k"
    key = load_signing_key("", path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key("", path).private_bytes_raw() == key.private_bytes_raw()
    pub = load_public_key(path.with_name("k.pub").read_text())
    assert key_id(pub) == key_id(key.public_key())
    assert load_signing_key(bytes(range(32)).hex(), tmp_path / "unused").private_bytes_raw() == (
        KEY.private_bytes_raw()
    )
    assert not (tmp_path / "unused").exists()
    with pytest.raises(FileNotFoundError):
        load_signing_key("", tmp_path / "missing", create=False)


# ---- spool


def test_spool_recovers_its_head_and_drops_a_cut_line(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "w0", "h-w0", 1 << 20)
    assert spool.open() == (0, GENESIS)
    chain = Chain(spool.writer)
    lines = [chain.link(b'{"i":%d}' % i) for i in range(3)]
    spool.append(b"\n".join(lines) + b"\n", chain.seq)
    spool.sync()
    spool.append(b'{"w":"' + spool.writer.encode() + b'","seq":4,"prev', 4)  # killed mid-line
    spool.close()
    again = Spool(tmp_path / "w0", "h-w0", 1 << 20)
    assert again.open() == (3, chain.head)
    assert again.writer == spool.writer
    data = (tmp_path / "w0" / "00000000000000000001.seg").read_bytes()
    assert data.endswith(lines[-1] + b"\n")
    again.close()


def test_one_process_per_spool(tmp_path: Path) -> None:
    first = Spool(tmp_path / "w0", "h-w0", 1 << 20)
    first.open()
    with pytest.raises(SpoolLocked):
        Spool(tmp_path / "w0", "h-w0", 1 << 20).open()
    threading.Timer(0.3, first.close).start()  # the previous holder finishes its drain
    started = time.monotonic()
    Spool(tmp_path / "w0", "h-w0", 1 << 20).open(wait=5.0)
    assert 0.2 < time.monotonic() - started < 4.0


def test_spool_rotates_reads_across_segments_and_drops_shipped_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "w0", "h-w0", 200)
    spool.open()
    chain = Chain(spool.writer)
    for i in range(10):
        line = chain.link(b'{"i":%d}' % i)
        spool.append(line + b"\n", chain.seq)
        spool.sync()
    assert len(segments(tmp_path / "w0")) > 2
    read: list[int] = []
    cursor, durable = Cursor(1, 0), spool.durable()
    while True:
        runs, cursor = spool.read(cursor, durable, max_bytes=150)
        if not runs:
            break
        for first, data in runs:
            read.extend(range(first, first + data.count(b"\n")))
    assert read == list(range(1, 11))
    assert spool.locate(4) != Cursor(1, 0)
    assert spool.read(spool.locate(4), durable)[0][0][0] == 5
    spool.drop_shipped(10)
    assert segments(tmp_path / "w0") == [durable.segment]  # only the active one is kept
    spool.close()


# ---- writer


class FakeSink:
    """A central store that can be down; refuses a seq it already holds (as XADD would)."""

    def __init__(self) -> None:
        self.data: dict[str, dict[int, bytes]] = {}
        self.down = False
        self.lock = threading.Lock()

    def last_seq(self, writer: str) -> int:
        if self.down:
            raise ConnectionError("down")
        return max(self.data.get(writer) or {0: b""})

    def append(self, writer: str, first_seq: int, data: bytes) -> None:
        if self.down:
            raise ConnectionError("down")
        assert data.endswith(b"\n")
        with self.lock:
            stream = self.data.setdefault(writer, {})
            for seq, line in enumerate(data.splitlines(), first_seq):
                assert seq > max(stream or {0: b""}), "a duplicate or out-of-order record"
                assert json.loads(line)["seq"] == seq
                stream[seq] = line

    def register(self, writer: str, meta: dict[str, Any]) -> None:
        pass

    def lines(self, writer: str) -> list[bytes]:
        return [self.data[writer][s] for s in sorted(self.data[writer])]


def writer_for(tmp_path: Path, sink: FakeSink, index: int = 0, **kw: Any) -> AuditWriter:
    spool = Spool(tmp_path / f"w{index}", f"h-w{index}", kw.pop("segment_bytes", 4096))
    return AuditWriter(spool, KEY, lambda: sink, **{"checkpoint_interval": 0.05, **kw})


def test_sink_outage_fills_the_spool_then_drains_in_order_without_duplicates(
    tmp_path: Path,
) -> None:
    sink = FakeSink()
    writer = writer_for(tmp_path, sink)
    writer.open()
    sent = 0
    for round_ in range(60):
        sink.down = 15 <= round_ < 40
        writer.write([b'{"request_id":"r%d"}\n' % (sent + i) for i in range(7)])
        sent += 7
        time.sleep(0.01)
    writer.close()
    lines = sink.lines(writer.writer)
    assert list(sorted(sink.data[writer.writer])) == list(range(1, len(lines) + 1))
    ids = [json.loads(line).get("request_id") for line in lines]
    assert [i for i in ids if i] == [f"r{i}" for i in range(sent)]
    assert verify_lines(lines, KEYS).ok


def test_a_stopped_writer_leaves_the_rest_in_the_spool_for_the_next_start(tmp_path: Path) -> None:
    sink = FakeSink()
    sink.down = True
    writer = writer_for(tmp_path, sink, drain_timeout=0.1)
    writer.open()
    writer.write([b'{"request_id":"a"}\n', b'{"request_id":"b"}\n'])
    writer.close()
    assert sink.data == {}
    sink.down = False
    again = writer_for(tmp_path, sink)
    again.open()  # the same chain, continued
    again.write([b'{"request_id":"c"}\n'])
    again.close()
    lines = sink.lines(again.writer)
    assert again.writer == writer.writer
    ids = [json.loads(line).get("request_id") for line in lines]
    assert [i for i in ids if i] == ["a", "b", "c"]
    kinds = [json.loads(line).get("kind") for line in lines]
    assert kinds.count("open") == 2 and kinds[-1] == "checkpoint"
    assert verify_lines(lines, KEYS).ok


def test_workers_keep_chains_of_their_own(tmp_path: Path) -> None:
    sink = FakeSink()
    writers = [writer_for(tmp_path, sink, index=i) for i in range(2)]
    for w in writers:
        w.open()
        w.write([b'{"request_id":"x"}\n'])
        w.close()
    assert writers[0].writer != writers[1].writer
    assert set(sink.data) == {w.writer for w in writers}
    assert all(verify_lines(sink.lines(w.writer), KEYS).ok for w in writers)


def test_the_decision_log_thread_feeds_the_writer(tmp_path: Path) -> None:
    sink = FakeSink()
    writer = writer_for(tmp_path, sink)
    log = DecisionLog(str(tmp_path / "d.log"), 0.01, writer)
    log.start()
    for i in range(5):
        log._queue.put(b'{"request_id":"q%d"}\n' % i)
    log.note({"kind": "policy", "action": "policy.revision", "to": "abc"})
    log.stop()
    plain = (tmp_path / "d.log").read_bytes().splitlines()
    assert plain[0] == b'{"request_id":"q0"}'  # the decision log itself is unchanged
    assert len(plain) == 5  # notes are for the audit trail only
    lines = sink.lines(writer.writer)
    ids = [json.loads(line).get("request_id") for line in lines]
    assert [i for i in ids if i] == [f"q{i}" for i in range(5)]
    assert [json.loads(line)["to"] for line in lines if b'"kind":"policy"' in line] == ["abc"]
    assert verify_lines(lines, KEYS).ok


class PolicyOpa:
    """OPA's /v1/policies and /v1/data/extauthz, editable."""

    def __init__(self) -> None:
        self.modules = {"authz.rego": "package extauthz.authz\n", "risk.rego": "package risk\n"}
        self.data: dict[str, Any] = {"tiers": {"standard": []}}

    async def get(self, path: str) -> bytes:
        if path == "/v1/policies":
            return orjson.dumps({"result": [{"id": k, "raw": v} for k, v in self.modules.items()]})
        return orjson.dumps({"result": self.data})


async def test_policy_revisions_are_told_with_what_changed() -> None:
    from extauthz.policy.revision import RevisionWatcher

    opa = PolicyOpa()
    watcher = RevisionWatcher(opa, 1.0, 1.0)  # type: ignore[arg-type]
    told: list[dict[str, Any]] = []
    watcher.on_change = told.append
    first = await watcher.poll_once()
    await watcher.poll_once()  # unchanged: nothing told
    opa.modules["risk.rego"] += "x := 1\n"
    opa.modules["new.rego"] = "package new\n"
    second = await watcher.poll_once()
    opa.data["tiers"]["gold"] = []
    await watcher.poll_once()
    assert [(t["from"], t["to"]) for t in told][:2] == [(None, first), (first, second)]
    assert (told[1]["changed"], told[1]["added"], told[1]["removed"]) == (
        ["risk.rego"],
        ["new.rego"],
        [],
    )
    assert told[2]["changed"] == ["data:extauthz"]
    assert all(t["kind"] == "policy" and t["action"] == "policy.revision" for t in told)


def test_spool_runs_split_at_gaps_and_skip_what_the_sink_has(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "w0", "h-w0", 1 << 20)
    spool.open()
    chain = Chain(spool.writer)
    lines = [chain.link(b'{"i":%d}' % i) + b"\n" for i in range(6)]
    spool.close()
    assert spool.runs(b"".join(lines)) == [(1, b"".join(lines))]
    assert spool.runs(b"".join(lines), above=2) == [(3, b"".join(lines[2:]))]
    gappy = lines[:2] + lines[4:]  # seqs 1, 2, 5, 6
    assert spool.runs(b"".join(gappy)) == [(1, b"".join(lines[:2])), (5, b"".join(lines[4:]))]


def test_a_stopped_shipper_drains_what_is_durable_first(tmp_path: Path) -> None:
    from extauthz.audit.shipper import Shipper

    sink = FakeSink()
    spool = Spool(tmp_path / "w0", "h-w0", 1 << 20)
    spool.open()
    chain = Chain(spool.writer)
    for i in range(5):
        spool.append(chain.link(b'{"i":%d}' % i) + b"\n", chain.seq)
    spool.sync()
    stop = threading.Event()
    stop.set()  # told to end before it ever ran: it still ships what is on disk
    Shipper(spool, lambda: sink, stop, final_drain=2.0).run()
    assert sorted(sink.data[spool.writer]) == [1, 2, 3, 4, 5]
    assert spool.read_status() == (5, 0)
    spool.close()


def test_spools_of_workers_no_longer_run_are_shipped_by_worker_zero(tmp_path: Path) -> None:
    from extauthz.audit.writer import adopt_orphans

    sink = FakeSink()
    sink.down = True
    for index in (0, 1, 2):  # a run with three workers, the sink down when they stopped
        w = writer_for(tmp_path, sink, index=index, drain_timeout=0.05)
        w.open()
        w.write([b'{"request_id":"w%d"}\n' % index])
        w.close()
    sink.down = False
    held = Spool(tmp_path / "w2", "h-w2", 4096)
    held.open()  # w2 is held by a live process: left alone
    adopted = adopt_orphans(
        tmp_path, 1, lambda path: writer_for(tmp_path, sink, int(path.name[1:]))
    )
    held.close()
    assert len(adopted) == 1 and adopted[0].startswith("h-w1")  # w0 is in use by this run
    ids = [json.loads(line).get("request_id") for line in sink.lines(adopted[0])]
    assert "w1" in ids
    assert verify_lines(sink.lines(adopted[0]), KEYS).ok


def test_a_record_longer_than_a_shipment_is_still_read(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "w0", "h-w0", 1 << 20)
    spool.open()
    chain = Chain(spool.writer)
    lines = [chain.link(orjson.dumps({"detail": "x" * size})) + b"\n" for size in (10, 5000, 10)]
    spool.append(b"".join(lines), chain.seq)
    spool.sync()
    seen: list[int] = []
    cursor = Cursor(1, 0)
    while True:
        runs, cursor = spool.read(cursor, spool.durable(), max_bytes=1000)
        if not runs:
            break
        seen += [first + i for first, data in runs for i in range(data.count(b"\n"))]
    assert seen == [1, 2, 3]
    spool.close()


def test_a_full_disk_holds_a_bounded_number_of_records_and_the_chain_says_what_was_lost(
    tmp_path: Path,
) -> None:
    sink = FakeSink()
    writer = writer_for(tmp_path, sink, max_pending=10)
    writer.open()
    real_append = writer.spool.append
    full = True

    def append(data: bytes, last_seq: int) -> None:
        if full:
            raise OSError(28, "No space left on device")
        real_append(data, last_seq)

    writer.spool.append = append  # type: ignore[method-assign]
    sent = 0
    for _ in range(5):  # 35 records while the disk is full: 10 held, 25 dropped
        writer.write([b'{"request_id":"r%d"}\n' % (sent + i) for i in range(7)])
        sent += 7
    assert len(writer._pending) <= 10 + 1  # the bound (and at most one checkpoint)
    full = False
    writer.write([b'{"request_id":"after"}\n'])
    writer.close()
    lines = sink.lines(writer.writer)
    assert verify_lines(lines, KEYS).ok  # no gap: what was dropped was never chained
    docs = [json.loads(line) for line in lines]
    ids = [d["request_id"] for d in docs if "request_id" in d]
    assert ids == [f"r{i}" for i in range(10)] + ["after"]
    lost = [d for d in docs if d.get("kind") == "lost"]
    assert len(lost) == 1 and lost[0]["records"] == 25
    assert docs.index(lost[0]) < next(
        i for i, d in enumerate(docs) if d.get("request_id") == "after"
    )


def test_an_export_of_a_trimmed_chain_verifies_from_its_anchor_and_only_from_it() -> None:
    lines = chain_lines(20)
    cut = 9  # records 1..9 archived: the export begins with an anchor at seq 9
    anchor = orjson.dumps(
        {"w": "h-w0-abc", "anchor": cut, "head": hashlib.sha256(lines[cut - 1]).hexdigest()}
    )
    report = verify_lines([anchor, *lines[cut:]], KEYS)
    assert report.ok and report.writers["h-w0-abc"].anchored == cut
    assert "sequence_gap" in problem(lines[cut:])  # without the anchor, seq 1.. is missing
    wrong = anchor.replace(b'"head":"', b'"head":"0')[:-3] + b'"}'
    assert "broken_link" in problem([wrong, *lines[cut:]])
    assert "an anchor after records" in problem([*lines[:3], anchor, *lines[cut:]])
