"""The benchmark's processes: the project's stack (via devstack.Stack) plus the bench-only
components beside it — the trivial Python authz (B), the Go peers (D) and one bench Envoy whose
listeners differ only in their guard (see bench/envoy_bench.py).

Everything binds to 127.0.0.1 on free ports, in a temporary run directory, and is started and
stopped by the stack's own runner (extauthz.dev.runner), so `BenchStack.down()` signals
exactly the processes it started.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.envoy_bench import RATELIMIT_DOMAIN, bench_config
from extauthz.authn.apikeys import key_record_name
from extauthz.dev.devstack import ROOT, Stack, envoy_component
from extauthz.dev.runner import Component, free_ports, grpc_health_ok, http_ok, tcp_ok
from extauthz.policy.tools import IGNORE_ARGS
from extauthz.settings import Settings

BIN = ROOT / "bin"
BENCH_DIR = Path(__file__).resolve().parent
PEER_POLICY = BENCH_DIR / "peers" / "policy"
# Everything the benchmark sends: an infer call on the cheap `digits` model.
DIGITS_PATH = "/v2/models/digits/infer"


def bench_settings(run_dir: Path, **overrides: object) -> Settings:
    """Production defaults, except: every port is a free one (metrics on, so the benchmark can
    read the service's own counters), files live in `run_dir`."""
    names = [n for n in Settings.model_fields if n == "port" or n.endswith("_port")]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    opa, redis_port = free_ports(2)
    values: dict[str, object] = {
        **ports,
        "run_dir": run_dir,
        "opa_url": f"http://127.0.0.1:{opa}",
        "redis_url": f"redis://127.0.0.1:{redis_port}/0",
        "key_pepper_file": run_dir / "key-pepper",
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Peers:
    """Which Go peers this machine has, and why one is missing."""

    authz: str  # "opa-envoy-plugin" | "opa-authz" | ""
    ratelimit: bool
    notes: list[str]

    @classmethod
    def detect(cls) -> Peers:
        notes = []
        refused = BIN / ".opa-envoy-plugin.refused"
        if (BIN / "opa-envoy-plugin").is_file():
            authz = "opa-envoy-plugin"
        else:
            if refused.is_file():
                # the proxy's answer, without its URL: "403 Forbidden ... not available."
                text = " ".join(refused.read_text().split())
                why = ", ".join(re.findall(r"\d{3} [A-Z][a-z]+|server response: [^.]*\.", text))
                notes.append(
                    "opa-envoy-plugin v1.19.1-envoy could not be installed: the Go module proxy "
                    f"refuses the module ({why or 'see bin/.opa-envoy-plugin.refused'})."
                )
            authz = "opa-authz" if (BIN / "opa-authz").is_file() else ""
            if authz:
                notes.append(
                    "Peer D's authz is therefore bin/opa-authz (bench/peers/opa-authz): "
                    "opa-envoy-plugin's design — Go gRPC ext_authz, the same input document, "
                    "the Rego query evaluated in-process by OPA's Go library v1.22.0 — without "
                    "its plugin manager and decision logs."
                )
            else:
                notes.append("No OPA peer binary: run scripts/install_bench_tools.sh.")
        ratelimit = (BIN / "ratelimit").is_file()
        if not ratelimit:
            notes.append("envoyproxy/ratelimit is missing: run scripts/install_bench_tools.sh.")
        return cls(authz, ratelimit, notes)


class BenchStack:
    """The project's stack (no Envoy of its own) and the bench components, on free ports."""

    def __init__(
        self,
        run_dir: Path,
        *,
        model: bool = True,
        peers: Peers | None = None,
        trivial_delay_us: int = 0,
        extauthz_delay_us: int = 0,
        settings: Settings | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.settings = settings or bench_settings(run_dir)
        self.stack = Stack(self.settings, redis_aof=False)
        self.runner = self.stack.runner
        self.model = model
        self.peers = peers or Peers("", False, [])
        self.trivial_delay_us = trivial_delay_us
        self.extauthz_delay_us = extauthz_delay_us
        (
            self.trivial_port,
            self.peer_port,
            self.peer_http_port,
            self.rl_http_port,
            self.rl_grpc_port,
            self.rl_debug_port,
            self.envoy_admin_port,
            self.sink_port,
        ) = free_ports(8)
        self.listener_ports: dict[str, int] = {}
        self.key = ""
        self.key_id = ""
        self.jwt = ""
        self._started: list[str] = []  # bench components, in start order
        self.logs = self.runner.logs

    # ---- lifecycle
    def up(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        names = ["redis", "opa", "extauthz"] + (["model"] if self.model else [])
        if self.extauthz_delay_us:
            names.remove("extauthz")
        self.stack.up(names)
        try:
            if self.extauthz_delay_us:
                self.stack.prepare_identity()  # what up() does before starting extauthz
                self._start(self._slowed_extauthz())
            self.key, self.key_id = self._create_key()
            # path E's credential: a dev-issuer JWT Envoy verifies itself (long enough for a run)
            self.jwt = self.stack.dev_issuer.mint("bench", ("analyst",), ("vision",), "bench", 7200)
            self._start(self._trivial())
            if self.peers.authz:
                self._write_peer_data()
                self._start(self._peer_authz())
            if self.peers.ratelimit:
                self._write_ratelimit_config()
                self._start(self._ratelimit())
            self._start(self._envoy())
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        for name in reversed(self._started):
            self.runner.stop(name)
        self._started.clear()
        self.stack.down()

    def __enter__(self) -> BenchStack:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def pid(self, name: str) -> int | None:
        """The pid of a running component, the stack's or the bench's."""
        return self.runner.pid(name)

    # ---- components
    def _start(self, comp: Component) -> None:
        self.runner.start(comp)
        self._started.append(comp.name)

    def _slowed_extauthz(self) -> Component:
        """extauthz with a CPU-burning delay in every Check (the gate's self-test only)."""
        return Component(
            "extauthz",
            [sys.executable, "-m", "bench.slowdown", str(self.extauthz_delay_us)],
            lambda: grpc_health_ok(self.settings.port),
            env=self.stack.service_env(),
        )

    def _trivial(self) -> Component:
        argv = [sys.executable, "-m", "bench.trivial_authz", "--port", str(self.trivial_port)]
        if self.trivial_delay_us:
            argv += ["--delay-us", str(self.trivial_delay_us)]
        return Component("trivial_authz", argv, lambda: grpc_health_ok(self.trivial_port))

    def _peer_authz(self) -> Component:
        roots = [str(PEER_POLICY), str(self.stack.policy_dir), str(self.run_dir / "peer-data")]
        if self.peers.authz == "opa-envoy-plugin":
            argv = [
                str(BIN / "opa-envoy-plugin"),
                "run",
                "--server",
                "--addr",
                f"127.0.0.1:{self.peer_http_port}",
                "--disable-telemetry",
                "--log-level",
                "error",
                "--set",
                f"plugins.envoy_ext_authz_grpc.addr=127.0.0.1:{self.peer_port}",
                "--set",
                "plugins.envoy_ext_authz_grpc.path=envoy/authz/decision",
                *IGNORE_ARGS,
                *roots,
            ]
        else:
            argv = [
                str(BIN / "opa-authz"),
                "-addr",
                f"127.0.0.1:{self.peer_port}",
                "-query",
                "data.envoy.authz.decision",
                *roots,
            ]
        return Component("peer_authz", argv, lambda: tcp_ok(self.peer_port))

    def _ratelimit(self) -> Component:
        env = {
            "USE_STATSD": "false",
            "LOG_LEVEL": "warn",
            "REDIS_SOCKET_TYPE": "tcp",
            "REDIS_URL": f"127.0.0.1:{self.settings.redis_port}",
            "RUNTIME_ROOT": str(self.run_dir / "ratelimit-runtime"),
            "RUNTIME_SUBDIRECTORY": "ratelimit",
            "RUNTIME_WATCH_ROOT": "false",
            "HOST": "127.0.0.1",
            "PORT": str(self.rl_http_port),
            "GRPC_HOST": "127.0.0.1",
            "GRPC_PORT": str(self.rl_grpc_port),
            "DEBUG_HOST": "127.0.0.1",
            "DEBUG_PORT": str(self.rl_debug_port),
        }
        return Component(
            "ratelimit",
            [str(BIN / "ratelimit")],
            lambda: http_ok(f"http://127.0.0.1:{self.rl_http_port}/healthcheck"),
            env=env,
        )

    def _envoy(self) -> Component:
        paths = ["A", "B", "C"] + (["D"] if self.peers.authz else []) + ["E"]
        self.listener_ports = dict(zip(paths, free_ports(len(paths)), strict=True))
        config = bench_config(
            listeners=self.listener_ports,
            sink_port=self.sink_port,
            admin_port=self.envoy_admin_port,
            model_port=self.settings.model_port,
            extauthz_port=self.settings.port,
            trivial_port=self.trivial_port,
            peer_port=self.peer_port if self.peers.authz else None,
            ratelimit_port=self.rl_grpc_port if self.peers.ratelimit else None,
            max_body_bytes=self.settings.max_body_bytes,
            access_log_dir=self.logs,
            native_jwt=(
                Path(self.stack.jwks_location),
                self.settings.jwt_issuer,
                self.settings.jwt_audience,
            ),
        )
        path = self.run_dir / "envoy-bench.json"
        path.write_text(json.dumps(config, indent=1))
        return envoy_component("envoy_bench", path, self.envoy_admin_port)

    # ---- data
    def _create_key(self) -> tuple[str, str]:
        """A key on the `bench` tier, through the real CLI (as an operator would)."""
        out = subprocess.run(
            [
                *[sys.executable, "-m", "extauthz", "keys", "create"],
                *["--subject", "bench", "--roles", "analyst", "--projects", "vision"],
                *["--tier", "bench", "--json"],
            ],
            env={**os.environ, **self.stack.service_env()},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        doc = json.loads(out.stdout)
        return doc["key"], doc["key_id"]

    def _write_peer_data(self) -> None:
        """The key record (hash, never the key) for the peer's Rego, at data.bench."""
        client = redis.Redis.from_url(self.settings.redis_url, decode_responses=True)
        try:
            raw = client.hgetall(key_record_name(self.key_id))
        finally:
            client.close()
        pepper = self.stack.key_pepper_file.read_text().strip()
        record = {
            "hash": raw["hash"],
            "subject": raw["subject"],
            "roles": [r for r in raw.get("roles", "").split(",") if r],
            "projects": [p for p in raw.get("projects", "").split(",") if p],
            "tier": raw["tier"],
            "status": raw["status"],
        }
        target = self.run_dir / "peer-data" / "bench"
        target.mkdir(parents=True, exist_ok=True)
        doc = {"pepper": pepper, "keys": {self.key_id: record}}
        (target / "data.json").write_text(json.dumps(doc))

    def _write_ratelimit_config(self) -> None:
        """The `bench` tier's quota as an envoyproxy/ratelimit descriptor, per key id."""
        tiers = json.loads((self.stack.policy_dir / "extauthz/tiers/data.json").read_text())
        (window,) = tiers["bench"]  # one window on the bench tier
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}[int(window["window"])]
        target = self.run_dir / "ratelimit-runtime" / "ratelimit" / "config"
        target.mkdir(parents=True, exist_ok=True)
        (target / "config.yaml").write_text(
            f"domain: {RATELIMIT_DOMAIN}\n"
            "descriptors:\n"
            "  - key: key_id\n"
            "    rate_limit:\n"
            f"      unit: {unit}\n"
            f"      requests_per_unit: {int(window['limit'])}\n"
        )
