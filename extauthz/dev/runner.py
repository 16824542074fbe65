"""The one process runner behind `make up`, the pytest fixtures and the benchmarks.

Each component runs in its own session (so its children stop with it), logs to
<run_dir>/logs/<name>.log, and is remembered in <run_dir>/pids/<name>.pid as "pid starttime"
so `stop` only ever signals the process this runner started (a reused pid is not ours).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class StackError(RuntimeError):
    pass


@dataclass
class Component:
    """One process: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    start_timeout: float = 60.0


class Runner:
    """Start, readiness, pid file, stop and log tail for the components of one run directory."""

    def __init__(self, run_dir: Path, cwd: Path | None = None) -> None:
        self.run_dir = run_dir
        self.cwd = cwd
        self.logs = run_dir / "logs"
        self.pids = run_dir / "pids"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # those this object started

    def log_file(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, comp: Component) -> None:
        """Start `comp` and wait until it is ready; on failure stop it and raise with its log."""
        if self.running(comp.name):
            raise StackError(
                f"{comp.name} is already running (pid file {self._pidfile(comp.name)})"
            )
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        log_path = self.log_file(comp.name)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                comp.argv,
                cwd=self.cwd,
                env={**os.environ, **comp.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._procs[comp.name] = proc
        self._pidfile(comp.name).write_text(f"{proc.pid} {_proc_start_time(proc.pid)}\n")
        deadline = time.monotonic() + comp.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if comp.ready():
                return
            time.sleep(0.1)
        reason = (
            f"exited with {proc.returncode}" if proc.poll() is not None else "not ready in time"
        )
        self.stop(comp.name)
        raise StackError(f"{comp.name} failed to start ({reason}); log tail:\n{tail(log_path)}")

    def _pidfile(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def pid(self, name: str) -> int | None:
        """The pid started for `name`, if that very process still runs."""
        try:
            pid_s, start = self._pidfile(name).read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        if _proc_start_time(pid) != start:
            return None  # gone, or the pid was reused by another process
        proc = self._procs.get(name)
        if proc is not None and proc.pid == pid:
            return pid if proc.poll() is None else None  # poll reaps a crashed child of ours
        return pid if _alive(pid) else None

    def running(self, name: str) -> bool:
        return self.pid(name) is not None

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """SIGTERM the component's process group, SIGKILL after `timeout`; forget its pid."""
        pid = self.pid(name)
        if pid is not None:
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            if _alive(pid):
                _signal_group(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.05)
        proc = self._procs.pop(name, None)
        if proc is not None:
            proc.wait()
        self._pidfile(name).unlink(missing_ok=True)


# ---- readiness probes


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (for stacks beside a running one)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def tcp_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str, expect: bytes | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            body = resp.read()
            return resp.status == 200 and (expect is None or expect in body)
    except OSError:
        return False


def redis_ok(port: int, command: bytes = b"PING", expect: bytes = b"+PONG") -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(command + b"\r\n")
            return expect in sock.recv(4096)
    except OSError:
        return False


def grpc_health_ok(port: int) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
            return resp.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


# ---- processes


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime); the command name (field 2) may contain spaces, so split after ')'
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        # reap it if it is our child; otherwise just probe
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return _proc_start_time(pid) is not None and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
