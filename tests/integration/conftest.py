from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from extauthz.dev.devstack import Stack, cluster_ports
from extauthz.wiring import redis_client
from tests.conftest import stack_settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Only what integration tests talk to: Redis (no AOF, for speed) and OPA."""
    stack = Stack(stack_settings(tmp_path_factory.mktemp("services")), redis_aof=False)
    stack.up(["redis", "opa"])
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(stack.settings.model_copy(update={"redis_timeout": 2.0}))
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def cluster_url(stack: Stack) -> Iterator[str]:
    """A real 3-master Redis Cluster (no replicas) on free ports, for the limiter tests."""
    ports = cluster_ports(3)
    url = stack.cluster_up(ports)
    yield url
    stack.cluster_down(ports)


class Clock:
    """A settable clock (seconds since the epoch)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    # the start of a minute, so bucket arithmetic in tests is easy to read
    return Clock(1_800_000_000.0)
