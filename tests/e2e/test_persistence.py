"""State that must survive does: a dev stack with AOF keeps API keys across a Redis restart,
and `up` after a crash restarts only the component that is gone (issue 11, finding 10)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from extauthz.dev.devstack import ORDER, Stack
from extauthz.dev.runner import free_ports
from tests.conftest import stack_settings
from tests.e2e.payloads import DIGITS

pytestmark = pytest.mark.e2e
URL = "/v2/models/digits/infer"
WARNING = "Redis has persistence off"


@pytest.fixture(scope="module")
def aof_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own, as `make up` starts it: Redis with an append-only file."""
    settings = stack_settings(tmp_path_factory.mktemp("aof"))
    stack = Stack(settings, floor_port=free_ports(1)[0], redis_aof=True)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def cli(stack: Stack, *args: str) -> str:
    env = {**os.environ, **stack.service_env()}
    cmd = [sys.executable, "-m", "extauthz", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout


def status_within(client: httpx.Client, key: str, want: int, seconds: float = 10.0) -> int:
    """The status of an infer call, retried until `want` (the service reconnects to Redis)."""
    deadline = time.monotonic() + seconds
    while True:
        code = client.post(URL, json=DIGITS, headers={"x-api-key": key}).status_code
        if code == want or time.monotonic() > deadline:
            return code
        time.sleep(0.2)


def test_key_survives_a_redis_crash_and_up_restarts_only_redis(aof_stack: Stack) -> None:
    created = json.loads(
        cli(
            aof_stack,
            *["keys", "create", "--subject", "carol", "--roles", "analyst"],
            *["--projects", "vision", "--json"],
        )
    )
    with httpx.Client(base_url=aof_stack.envoy_url, timeout=10) as client:
        assert status_within(client, created["key"], 200) == 200
        time.sleep(1.5)  # appendfsync everysec: the key is on disk within a second
        before = {name: aof_stack.pid(name) for name in ORDER}
        os.kill(before["redis"], signal.SIGKILL)  # a crash, not a clean shutdown
        deadline = time.monotonic() + 10
        while aof_stack.running("redis"):
            assert time.monotonic() < deadline, "redis did not die"
            time.sleep(0.05)

        assert aof_stack.up() == ["redis"]  # the rest is left alone, not refused
        after = {name: aof_stack.pid(name) for name in ORDER}
        assert after["redis"] not in (None, before["redis"])
        assert {n: after[n] for n in ORDER if n != "redis"} == {
            n: before[n] for n in ORDER if n != "redis"
        }
        assert created["key_id"] in cli(aof_stack, "keys", "list")
        assert status_within(client, created["key"], 200) == 200


def test_service_warns_only_when_its_redis_does_not_persist(stack: Stack, aof_stack: Stack) -> None:
    assert WARNING in (stack.logs / "extauthz.log").read_text()  # the suite's stack: AOF off
    assert WARNING not in (aof_stack.logs / "extauthz.log").read_text()
