"""The audit trail through the real stack (Envoy → extauthz → Redis): every decision served is
in the central store, across a Redis outage, a SIGTERM and (within the flush bound) a SIGKILL;
an export verifies, and every kind of tampering with it is named; operator actions appear with
who, what and when; one decision is found by its request id with OPA's and Envoy's lines.

Own stack (Redis with its append-only file, so a Redis stop is an outage, not a data loss)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis as syncredis

from extauthz.audit.sink import read_stream, stream_key, writers
from extauthz.audit.verify import archive_files, archived_lines, archived_writers
from extauthz.dev.devstack import Stack
from extauthz.dev.runner import free_ports
from extauthz.settings import Settings
from extauthz.store.schema import audit_base
from tests.conftest import stack_settings
from tests.e2e.payloads import DIGITS

pytestmark = pytest.mark.e2e
URL = "/v2/models/digits/infer"
FLUSH = 0.05  # EXTAUTHZ_AUDIT_FLUSH_INTERVAL of this stack
# SIGKILL bound: a lost record was queued at most one flush interval plus one spool write
# (write + fsync, slow on a loaded disk) before the kill
KILL_SLACK = 0.15


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("audit-stack")
    base = stack_settings(run_dir)
    settings = Settings(
        **{
            **base.model_dump(),
            "audit_flush_interval": FLUSH,
            "audit_checkpoint_interval": 0.2,
            "audit_drain_timeout": 5.0,
            "auto_threat_ratio": 0.0,
            "workers": 2,  # serve --workers 2: one chain per worker
        }
    )
    stack = Stack(settings, floor_port=free_ports(1)[0], redis_aof=True)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def cli(
    stack: Stack, *args: str, check: bool = True, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        env={**os.environ, **stack.service_env(), **env},
        capture_output=True,
        text=True,
        check=check,
    )


@pytest.fixture(scope="module")
def key(stack: Stack) -> str:
    out = cli(
        stack, "keys", "create", "--subject", "auditee", "--roles", "analyst",
        "--projects", "vision", "--tier", "bench", "--json",
    )  # fmt: skip
    return json.loads(out.stdout)["key"]


@pytest.fixture(scope="module")
def store(stack: Stack) -> Iterator[syncredis.Redis]:
    client = syncredis.Redis.from_url(stack.settings.redis_url)
    yield client
    client.close()


def audited_request_ids(store: syncredis.Redis) -> list[str]:
    """request_id of every decision record in the central store (every writer)."""
    ids = []
    for writer in writers(store):
        for _seq, line in read_stream(store, writer):
            if b'"request_id":' in line:
                ids.append(json.loads(line)["request_id"])
    return ids


def wait_for(predicate, timeout: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@dataclass
class Load:
    """Threads sending inference requests through Envoy; every response's x-request-id,
    status and arrival time (monotonic)."""

    url: str
    key: str
    threads: int = 6
    seen: list[tuple[str, int, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, timeout=10) as client:
            while not self._stop.is_set():
                try:
                    resp = client.post(URL, json=DIGITS, headers=headers)
                except httpx.HTTPError:
                    continue
                self.seen.append((resp.headers["x-request-id"], resp.status_code, time.monotonic()))

    def __enter__(self) -> Load:
        self._workers = [threading.Thread(target=self._run) for _ in range(self.threads)]
        for t in self._workers:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join()


def metric(stack: Stack, pattern: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{stack.settings.metrics_port}/metrics").text
    return sum(float(m[1]) for m in re.finditer(rf"^{pattern} (\S+)$", text, re.M))


def decisions_served(stack: Stack) -> float:
    return metric(stack, r"extauthz_decisions_total\{[^}]*\}")


def sink_errors(stack: Stack) -> float:
    return metric(stack, "extauthz_audit_sink_errors_total")


def verify(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(stack, "audit", "verify", *args, check=False)


def test_redis_outage_under_load_loses_no_record(stack: Stack, key: str, store) -> None:  # type: ignore[no-untyped-def]
    before, errors_before = decisions_served(stack), sink_errors(stack)
    with Load(stack.envoy_url, key) as load:
        time.sleep(1.0)
        stack.stop("redis")  # the central store is down; decisions fail closed (503)
        time.sleep(2.0)
        stack.up(["redis"])
        time.sleep(1.0)
    served = decisions_served(stack) - before
    ids = {rid for rid, _status, _t in load.seen}
    assert sink_errors(stack) > errors_before  # the shipper did meet the outage
    assert len(ids) == len(load.seen) == served  # every response was one decision
    assert wait_for(lambda: ids <= set(audited_request_ids(store)))
    audited = [rid for rid in audited_request_ids(store) if rid in ids]
    assert len(audited) == len(ids)  # each exactly once: no duplicate from the drain
    assert verify(stack).returncode == 0


def test_sigterm_loses_nothing(stack: Stack, key: str, store) -> None:  # type: ignore[no-untyped-def]
    with Load(stack.envoy_url, key) as load:
        time.sleep(2.0)
        stack.stop("extauthz")  # SIGTERM while requests are in flight
        time.sleep(0.3)
    decided = {rid for rid, status, _t in load.seen if status != 503}
    print(f"SIGTERM: {len(decided)} decided in ~2 s")
    assert len(decided) > 20
    # before any restart: the stopping service drained its spool into the store
    assert decided <= set(audited_request_ids(store))
    stack.up(["extauthz"])
    assert verify(stack).returncode == 0


def worker_pids(stack: Stack) -> list[int]:
    supervisor = stack.pid("extauthz")
    assert supervisor is not None
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(c) for c in children]


def test_sigkill_loses_at_most_one_flush_interval(stack: Stack, key: str, store) -> None:  # type: ignore[no-untyped-def]
    """One worker is killed; the supervisor then stops the other (SIGTERM: it loses none)."""
    workers_before = set(writers(store))
    pids = worker_pids(stack)
    assert len(pids) == 2
    pid = pids[0]
    with Load(stack.envoy_url, key) as load:
        time.sleep(2.0)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    stack.stop("extauthz")  # forget the dead process
    stack.up(["extauthz"])  # resumes the chain from its spool and ships it
    decided = [(rid, t) for rid, status, t in load.seen if status != 503 and t < killed_at]
    assert len(decided) > 20

    def shipped() -> bool:  # the restarted writer signed and shipped its open record
        return verify(stack, "--strict").returncode == 0

    assert wait_for(shipped)
    assert set(writers(store)) == workers_before  # the restarted workers resume their chains
    assert len([w for w in workers_before if w != "ops"]) == 2
    assert any(status == 503 and t > killed_at + 0.1 for _rid, status, t in load.seen)  # it died
    audited = set(audited_request_ids(store))
    lost = [(rid, killed_at - t) for rid, t in decided if rid not in audited]
    oldest = max((age for _rid, age in lost), default=0.0)
    window = sum(1 for _rid, t in decided if killed_at - t <= FLUSH)
    print(
        f"SIGKILL: {len(lost)} of {len(decided)} decided lost ({window} answered in the last "
        f"{FLUSH * 1000:.0f} ms), oldest lost answered {oldest * 1000:.0f} ms before the kill"
    )
    assert oldest <= FLUSH + KILL_SLACK, lost


def test_export_verifies_and_every_tampering_is_named(
    stack: Stack, key: str, tmp_path: Path
) -> None:
    with Load(stack.envoy_url, key, threads=2):
        time.sleep(0.5)
    time.sleep(0.5)  # the newest records get their checkpoint
    export = tmp_path / "audit.jsonl"
    out = cli(stack, "audit", "export", "--out", str(export))
    assert "exported" in out.stdout
    ok = verify(stack, "--file", str(export))
    assert ok.returncode == 0, ok.stdout
    lines = export.read_bytes().splitlines()
    decision_at = next(i for i, line in enumerate(lines) if b'"request_id":' in line)
    seq = json.loads(lines[decision_at])["seq"]

    def tampered(name: str, new: list[bytes]) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"\n".join(new) + b"\n")
        result = verify(stack, "--file", str(path))
        assert result.returncode == 1, (name, result.stdout)
        return result.stdout.splitlines()[-1]

    edited = list(lines)
    edited[decision_at] = re.sub(rb'"status":\d+', b'"status":200', lines[decision_at]).replace(
        b'"subject":"auditee"', b'"subject":"someone"'
    )
    assert edited[decision_at] != lines[decision_at]
    assert "broken_link: writer" in tampered("edited", edited)
    assert f" seq {seq} " in tampered("edited", edited)
    deleted = lines[:decision_at] + lines[decision_at + 1 :]
    assert re.search(rf"sequence_gap: .* seq {seq} ", tampered("deleted", deleted))
    swapped = list(lines)
    swapped[decision_at], swapped[decision_at + 1] = lines[decision_at + 1], lines[decision_at]
    assert re.search(rf"reordered: .* seq {seq} ", tampered("reordered", swapped))
    truncated = lines[:-1]  # the last line of the export is a checkpoint
    assert "unsigned_tail:" in tampered("truncated", truncated)
    forged = list(lines)
    last_checkpoint = max(i for i, line in enumerate(lines) if b'"kind":"checkpoint"' in line)
    forged[last_checkpoint] = re.sub(
        rb'"sig":"[^"]+"', b'"sig":"' + b"A" * 86 + b'=="', lines[last_checkpoint]
    )
    assert "bad_signature:" in tampered("forged", forged)


def test_operator_actions_are_audited_with_who_what_when(stack: Stack, tmp_path: Path) -> None:
    started = time.time()
    created = json.loads(
        cli(
            stack, "keys", "create", "--subject", "ops-test", "--roles", "analyst",
            "--projects", "vision", "--json", EXTAUTHZ_AUDIT_ACTOR="alice@example",
        ).stdout
    )  # fmt: skip
    cli(stack, "keys", "revoke", created["key_id"])
    cli(stack, "quarantine", "add", "--subject", "mallory", "--ttl", "60", "--cause", "test")
    cli(stack, "quarantine", "release", "--subject", "mallory")
    cli(stack, "throttle", "set", "--level", "elevated", "--ttl", "60", "--reason", "drill")
    cli(stack, "throttle", "clear")
    export = tmp_path / "ops.jsonl"
    cli(stack, "audit", "export", "--out", str(export))
    ops = [json.loads(line) for line in export.read_bytes().splitlines()]
    ops = [r for r in ops if r.get("kind") == "operator" and r["ts"] >= started]
    actions = [(r["action"], r["target"], r["outcome"]) for r in ops]
    assert actions == [
        ("keys.create", created["key_id"], "ok"),
        ("keys.revoke", created["key_id"], "ok"),
        ("quarantine.add", "subject:mallory", "ok"),
        ("quarantine.release", "subject:mallory", "ok"),
        ("throttle.threat", "elevated", "ok"),
        ("throttle.threat_clear", "threat", "ok"),
    ]
    assert ops[0]["actor"]["user"] == "alice@example"
    assert all(r["actor"]["login"] and r["actor"]["host"] for r in ops)
    assert ops[2]["details"]["cause"] == "test"
    assert created["key"] not in export.read_text()  # the secret is never audited
    assert verify(stack, "--file", str(export)).returncode == 0


def test_search_finds_a_decision_with_opa_and_envoy_lines(stack: Stack, key: str) -> None:
    resp = httpx.post(
        stack.envoy_url + URL, json=DIGITS, headers={"authorization": f"Bearer {key}"}
    )
    rid = resp.headers["x-request-id"]

    def found() -> dict | None:  # type: ignore[type-arg]
        result = cli(stack, "audit", "search", "--request-id", rid, check=False)
        if result.returncode != 0:
            return None
        doc = json.loads(result.stdout)
        return doc if doc["envoy_access_log"] else None

    assert wait_for(lambda: found() is not None)
    doc = found()
    assert doc is not None
    assert doc["audit"]["request_id"] == rid
    assert doc["audit"]["status"] == resp.status_code
    assert json.loads(doc["envoy_access_log"][0])["request_id"] == rid
    if doc["audit"]["policy_source"] == "opa":  # a cached decision has no OPA query of its own
        assert doc["opa_decision_id"] and doc["opa_decision_log"]


def test_a_policy_edit_is_audited_with_what_changed(stack: Stack, store) -> None:  # type: ignore[no-untyped-def]
    tiers = stack.policy_dir / "extauthz" / "tiers" / "data.json"
    original = tiers.read_text()
    started = time.time()

    def revisions() -> list[dict]:  # type: ignore[type-arg]
        found = []
        for writer in writers(store):
            for _seq, line in read_stream(store, writer):
                if b'"kind":"policy"' in line:
                    doc = json.loads(line)
                    if doc["ts"] >= started:
                        found.append(doc)
        return found

    doc = json.loads(original)
    doc["audit_probe"] = [{"name": "minute", "limit": 1, "window": 60}]
    tiers.write_text(json.dumps(doc))
    try:
        assert wait_for(lambda: bool(revisions()), timeout=15)
    finally:
        tiers.write_text(original)
    edit = revisions()[0]
    assert edit["action"] == "policy.revision" and edit["from"] and edit["to"] != edit["from"]
    assert edit["changed"] == ["data:extauthz"] and not edit["added"] and not edit["removed"]
    assert wait_for(lambda: len(revisions()) >= 2, timeout=15)  # the revert, too
    assert verify(stack).returncode == 0


def test_archive_moves_old_records_out_and_every_chain_still_verifies(  # type: ignore[no-untyped-def]
    stack: Stack, key: str, store, tmp_path: Path
) -> None:
    """Retention: `audit archive` moves every entry but each stream's newest into files, leaves
    an anchor; the store verifies from it, store + archive from the first record; an edited
    archive file or a deleted anchor is named; an export of the trimmed store verifies."""
    with Load(stack.envoy_url, key, threads=2) as load:
        time.sleep(0.5)
    served = [rid for rid, status, _ in load.seen if status == 200]
    assert served
    assert wait_for(lambda: served[0] in audited_request_ids(store))
    time.sleep(0.5)  # the newest records get their checkpoint
    held = {w: sum(int(f[b"n"]) for _, f in store.xrange(stream_key(w))) for w in writers(store)}
    archive = tmp_path / "archive"
    out = cli(stack, "audit", "archive", "--older-than", "0", "--out-dir", str(archive))
    assert "->" in out.stdout, out.stdout
    for writer in writers(store):
        assert store.xlen(stream_key(writer)) >= 1  # the newest entry stays
    moved = {w: sum(1 for _ in archived_lines(archive, w)) for w in archived_writers(archive)}
    assert moved and all(n > 0 for n in moved.values())
    shrunk = {w: sum(int(f[b"n"]) for _, f in store.xrange(stream_key(w))) for w in moved}
    assert all(shrunk[w] < held[w] for w in moved if w != "ops"), (held, shrunk)

    store_only = verify(stack)
    assert store_only.returncode == 0, store_only.stdout
    assert "archived)" in store_only.stdout
    whole = verify(stack, "--archive", str(archive))
    assert whole.returncode == 0, whole.stdout
    assert "archived)" not in whole.stdout  # every chain from its first record

    # the oldest decision is in the archive now: found only when the archive is searched
    assert cli(stack, "audit", "search", "--request-id", served[0], check=False).returncode == 1
    found = cli(stack, "audit", "search", "--request-id", served[0], "--archive", str(archive))
    assert json.loads(found.stdout)["audit"]["request_id"] == served[0]

    # the move itself is an operator action naming the file and its digest
    ops = tmp_path / "ops.jsonl"
    cli(stack, "audit", "export", "--out", str(ops))
    archived_actions = [
        json.loads(line) for line in ops.read_bytes().splitlines() if b"audit.archive" in line
    ]
    files = {a["details"]["file"]: a["details"]["sha256"] for a in archived_actions}
    for path in archive.glob("*/*.jsonl"):
        assert files[path.name] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert verify(stack, "--file", str(ops)).returncode == 0  # an export begins at the anchors

    # tampering with an archive file is named, and so is a deleted anchor
    writer = next(w for w in moved if w != "ops")
    path = archive_files(archive, writer)[0]
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"status":200', b'"status":403', 1))
    try:
        edited = verify(stack, "--archive", str(archive))
        assert edited.returncode == 1
        assert f"FAILED broken_link: writer {writer} seq" in edited.stdout
        assert "in the archive" in edited.stdout
    finally:
        path.write_bytes(original)
    base_key = audit_base(writer)
    anchor = store.hgetall(base_key)
    store.delete(base_key)
    try:
        cut = verify(stack)
        assert cut.returncode == 1
        assert f"FAILED sequence_gap: writer {writer} seq 1:" in cut.stdout
    finally:
        store.hset(base_key, mapping=anchor)
    assert verify(stack).returncode == 0


def test_tampering_with_the_central_store_is_named(stack: Stack, store) -> None:  # type: ignore[no-untyped-def]
    """Last in this module: it rewrites the ops chain in Redis, as someone with write access
    to the store might, and then deletes it."""
    cli(stack, "quarantine", "add", "--subject", "store-probe", "--ttl", "60", "--cause", "probe")
    assert verify(stack).returncode == 0
    key = "ea:{audit:ops}:log"
    entries = store.xrange(key)
    entry_id, fields = entries[0]
    lines = fields[b"r"].splitlines()
    seq = json.loads(lines[0])["seq"]
    lines[0] = lines[0].replace(b'"outcome":"ok"', b'"outcome":"refused"')
    store.delete(key)
    for eid, f in entries:
        data = b"\n".join(lines) + b"\n" if eid == entry_id else f[b"r"]
        store.xadd(key, {"r": data, "n": f[b"n"]}, id=eid)
    edited = verify(stack)
    assert edited.returncode == 1
    assert f"FAILED broken_link: writer ops seq {seq}:" in edited.stdout
    store.delete(key)
    gone = verify(stack)
    assert gone.returncode == 1 and "FAILED missing_stream: writer ops" in gone.stdout
