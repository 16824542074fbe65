"""Exact versions of everything measured, and the machine's facts, for the report."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from extauthz.dev.devstack import ROOT, find_envoy


def _out(argv: list[str], pattern: str = r"(.+)") -> str:
    try:
        text = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    found = re.search(pattern, text.stdout + text.stderr)
    return found[1].strip() if found else "unknown"


def _pkg(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> str:
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _git() -> str:
    commit = _out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _out(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], r"(\S)")
    return commit + (" (with uncommitted changes)" if dirty not in ("unknown", "not found") else "")


def gather() -> dict[str, Any]:
    bin_dir = ROOT / "bin"
    opa = str(bin_dir / "opa") if (bin_dir / "opa").is_file() else shutil.which("opa") or "opa"
    model_python = ROOT / ".venv-model" / "bin" / "python"
    rl_version = bin_dir / ".ratelimit.version"
    versions = {
        "envoy": _out([find_envoy(), "--version"], r"version: \S+/([\d.]+\S*)"),
        "opa": _out([opa, "version"], r"Version: (\S+)"),
        "python": sys.version.split()[0],
        "grpcio": _pkg("grpcio"),
        "protobuf": _pkg("protobuf"),
        "redis (server)": _out(["redis-server", "--version"], r"v=(\S+)"),
        "redis-py": _pkg("redis"),
        "hiredis": _pkg("hiredis"),
        "aiohttp": _pkg("aiohttp"),
        "MLServer": _out([str(model_python), "-c", "import mlserver; print(mlserver.__version__)"]),
        "h2load": _out(["h2load", "--version"], r"nghttp2/(\S+)"),
        "envoyproxy/ratelimit": rl_version.read_text().strip()
        if rl_version.is_file() and (bin_dir / "ratelimit").is_file()
        else "not installed",
        "opa-envoy-plugin": "installed"
        if (bin_dir / "opa-envoy-plugin").is_file()
        else "not installable (see peers)",
        "bench/peers/opa-authz": "OPA Go library "
        + _out(
            ["go", "version", "-m", str(bin_dir / "opa-authz")], r"open-policy-agent/opa\s+(\S+)"
        )
        + ", "
        + _out(["go", "version", "-m", str(bin_dir / "opa-authz")], r"^\S+: (go\S+)")
        if (bin_dir / "opa-authz").is_file()
        else "not built",
        "py-spy": _out([str(Path(sys.executable).parent / "py-spy"), "--version"], r"py-spy (\S+)"),
    }
    machine = {
        "cores (nproc)": str(os.cpu_count()),
        "CPU model": _cpu_model(),
        "memory": _mem_gib(),
        "kernel": platform.release(),
        "git commit": _git(),
    }
    return {"versions": versions, "machine": machine}
