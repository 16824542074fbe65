from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from extauthz.devstack import Stack
from extauthz.wiring import redis_client


@pytest.fixture
async def redis(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(stack.settings.model_copy(update={"redis_timeout": 2.0}))
    yield client
    await client.aclose()


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
