"""Fixtures of the stage micro-benchmarks: a real Redis and OPA (devstack.Stack, free ports, a
temporary run directory), one event loop for every async stage, and `bench_async`.

    .venv/bin/python -m pytest bench/micro --benchmark-json=out.json
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.procs import bench_settings
from extauthz.dev.devstack import ROOT, Stack
from extauthz.settings import Settings

# Async stages: each round awaits the stage BATCH times in one event loop; the time per call is
# the round's time / BATCH (no event-loop start/stop per call, which would dwarf a cache hit).
BATCH = 100
ROUNDS = 30


def bench_async(
    benchmark: Any,
    loop: asyncio.AbstractEventLoop,
    make: Callable[[], Awaitable[Any]],
    batch: int = BATCH,
    rounds: int = ROUNDS,
) -> Any:
    """Benchmark an async call: `rounds` rounds of `batch` sequential awaits, per-call stats.

    pytest-benchmark divides a round's time by `iterations` and calls the target that many
    times per round; the first call of each round runs the whole batch inside one
    `run_until_complete`, the other batch-1 calls only count (a few ns each)."""

    async def run_batch() -> Any:
        result = None
        for _ in range(batch):
            result = await make()
        return result

    calls = 0
    last: list[Any] = [None]

    def target() -> Any:
        nonlocal calls
        if calls % batch == 0:
            last[0] = loop.run_until_complete(run_batch())
        calls += 1
        return last[0]

    benchmark.extra_info["batch"] = batch
    benchmark.pedantic(target, rounds=rounds, iterations=batch, warmup_rounds=2)
    return last[0]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("micro")
    (run_dir / "logs").mkdir()
    settings = bench_settings(run_dir, decision_log=str(run_dir / "logs" / "decisions.log"))
    stack = Stack(settings, redis_aof=False)
    stack.up(["redis", "opa"])
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="session")
def settings(stack: Stack) -> Settings:
    return stack.settings


@pytest.fixture(scope="session")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture(scope="session")
def api_key(stack: Stack) -> str:
    """A `bench`-tier key made by the real CLI (analyst on project vision)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "extauthz",
            "keys",
            "create",
            "--subject",
            "bench",
            "--roles",
            "analyst",
            "--projects",
            "vision",
            "--tier",
            "bench",
            "--json",
        ],
        env={**os.environ, **stack.service_env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)["key"]


@pytest.fixture(scope="session")
def run_dir(stack: Stack) -> Path:
    return stack.run_dir
