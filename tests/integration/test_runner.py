"""The dev room's process runner with real processes: pid files, readiness, crashes, stop."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from extauthz.dev.runner import Component, Runner, StackError

pytestmark = pytest.mark.integration
SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)"]


def test_start_records_the_process_and_stop_ends_exactly_it(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    runner.start(Component("sleeper", SLEEPER, lambda: True))
    pid = runner.pid("sleeper")
    assert pid is not None
    assert (tmp_path / "pids" / "sleeper.pid").read_text().split()[0] == str(pid)
    with pytest.raises(StackError, match="already running"):
        runner.start(Component("sleeper", SLEEPER, lambda: True))
    runner.stop("sleeper")
    assert not runner.running("sleeper")
    assert not (tmp_path / "pids" / "sleeper.pid").exists()


def test_a_crashed_component_is_not_running_and_starts_again(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    runner.start(Component("sleeper", SLEEPER, lambda: True))
    first = runner.pid("sleeper")
    assert first is not None
    os.kill(first, signal.SIGKILL)
    os.waitid(os.P_PID, first, os.WEXITED | os.WNOWAIT)  # dead, not yet reaped: a zombie
    assert not runner.running("sleeper")
    runner.start(Component("sleeper", SLEEPER, lambda: True))
    assert runner.pid("sleeper") not in (None, first)
    runner.stop("sleeper")


def test_a_pid_file_of_another_process_is_not_ours(tmp_path: Path) -> None:
    runner = Runner(tmp_path)
    runner.pids.mkdir(parents=True)
    (runner.pids / "other.pid").write_text(f"{os.getpid()} 1\n")  # our pid, another start time
    assert not runner.running("other")
    runner.stop("other")  # signals nothing: this test process is still here


def test_a_component_that_dies_at_start_fails_with_its_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bad config', flush=True); sys.exit(3)"]
    with pytest.raises(StackError, match=r"(?s)exited with 3.*bad config"):
        Runner(tmp_path).start(Component("broken", argv, lambda: False))
    assert not (tmp_path / "pids" / "broken.pid").exists()
