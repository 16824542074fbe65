"""`serve --workers N`: the supervisor's contract with its workers (no process is started)."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

import pytest

from extauthz import server
from extauthz.settings import Settings


class _Exited:
    """A Popen stand-in for a worker that has already exited cleanly."""

    started: list[dict[str, Any]] = []

    def __init__(self, argv: list[str], env: dict[str, str], **_: object) -> None:
        self.argv, self.env, self.pid, self.returncode = argv, env, 4_000_000, 0
        _Exited.started.append({"argv": argv, "env": env})

    def poll(self) -> int:
        return 0


def test_every_worker_is_told_how_many_workers_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker alone trusts its own DPoP jti memory during a Redis outage; one of several must
    not. So each must learn N even when N came from `serve --workers` and not the settings."""
    _Exited.started.clear()
    monkeypatch.setattr(subprocess, "Popen", _Exited)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert server.supervise(Settings(metrics_port=0, workers=1), 3) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert [w["argv"][-1] for w in _Exited.started] == ["0", "1", "2"]
    assert all(w["env"]["EXTAUTHZ_WORKERS"] == "3" for w in _Exited.started)
