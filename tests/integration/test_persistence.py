"""The persistence check against real Redis: the test stack's (no AOF) and one with AOF."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from extauthz.dev.devstack import Stack, redis_component
from extauthz.dev.runner import free_ports
from extauthz.persistence import redis_persists

pytestmark = pytest.mark.integration


@pytest.fixture
async def aof_redis(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    (port,) = free_ports(1)
    name = f"redis-aof-{port}"
    stack.runner.start(redis_component(name, port, stack.run_dir / name, aof=True))
    client = aioredis.Redis(port=port)
    try:
        yield client
    finally:
        await client.aclose()
        stack.runner.stop(name)


async def test_the_test_stack_redis_does_not_persist(redis: aioredis.Redis) -> None:
    assert await redis_persists(redis) is False


async def test_a_redis_with_aof_persists(aof_redis: aioredis.Redis) -> None:
    assert await redis_persists(aof_redis) is True
