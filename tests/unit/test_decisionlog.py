"""The decision log: one JSON line per decision, written off the request path, none lost on stop."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from extauthz.decisionlog import DecisionLog
from extauthz.request import parse_check_request
from extauthz.types import Decision, Reason, Status
from tests.unit.checkrequests import check_request


def _view():  # type: ignore[no-untyped-def]
    return parse_check_request(check_request(headers={"x-request-id": "r-1"}), 1024)


def test_every_record_is_written_by_stop(tmp_path: Path) -> None:
    target = tmp_path / "decisions.log"
    log = DecisionLog(str(target))
    log.start()
    view = _view()

    def burst(offset: int) -> None:
        for i in range(2_000):
            log.record(view, Decision(Status.OK, Reason.OK, f"d{offset + i}"), 1_000)

    threads = [threading.Thread(target=burst, args=(n * 10_000,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.stop()
    lines = target.read_bytes().splitlines()
    assert len(lines) == 6_000
    ids = {json.loads(line)["decision_id"] for line in lines}
    assert len(ids) == 6_000
    first = json.loads(lines[0])
    assert first["request_id"] == "r-1" and first["status"] == 200 and first["reason"] == "ok"


def test_stop_without_start_and_twice_is_harmless(tmp_path: Path) -> None:
    log = DecisionLog(str(tmp_path / "d.log"))
    log.stop()
    log.start()
    log.stop()
    log.stop()
    assert (tmp_path / "d.log").read_bytes() == b""
