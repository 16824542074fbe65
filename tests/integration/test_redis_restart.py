"""A Redis restart under a running service: pooled connections the old server closed must not
turn the next decisions into 503s (one retry on a fresh connection), and a Redis that is down
still fails fast (the retry is one refused connect, not a wait)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from extauthz.dev.devstack import find_redis
from extauthz.dev.runner import free_ports
from extauthz.settings import Settings
from extauthz.wiring import redis_client

pytestmark = pytest.mark.integration


def _start(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(  # noqa: S603 - the Debian redis-server the project uses
        [find_redis(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


async def test_connections_a_restarted_redis_closed_are_replaced_not_failed(
    tmp_path: Path,
) -> None:
    port = free_ports(1)[0]
    proc = _start(port, tmp_path)
    client = redis_client(Settings(redis_url=f"redis://127.0.0.1:{port}/0", redis_timeout=0.5))
    try:
        # several pooled connections, all idle when the server goes away
        await asyncio.gather(*(client.blpop([f"k{i}"], timeout=0.05) for i in range(6)))
        proc.terminate()
        proc.wait()
        with pytest.raises(RedisConnectionError):  # down: fails at once, no waiting
            started = time.monotonic()
            await client.get("k")
        assert time.monotonic() - started < 0.5
        proc = _start(port, tmp_path)
        results = await asyncio.gather(
            *(client.set(f"k{i}", i) for i in range(6)), return_exceptions=True
        )
        assert results == [True] * 6, results
    finally:
        await client.aclose()
        proc.terminate()
        proc.wait()
