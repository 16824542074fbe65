"""The start-up check of Redis persistence, against fakes of the CONFIG GET answers."""

from __future__ import annotations

import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from extauthz.persistence import redis_persists, warn_if_not_persistent


class FakeRedis:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    async def config_get(self, *patterns: str) -> object:
        assert patterns == ("appendonly", "save")
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        ({"appendonly": "yes", "save": ""}, True),
        ({"appendonly": "no", "save": "3600 1 300 100"}, True),
        ({"appendonly": "no", "save": ""}, False),
        (ResponseError("unknown command 'CONFIG'"), None),  # renamed or disabled
        (RedisConnectionError("down"), None),
        (TimeoutError(), None),
        ({"node-1": {"appendonly": "yes"}}, None),
    ],
)
async def test_persistence_verdict(answer: object, verdict: bool | None) -> None:
    assert await redis_persists(FakeRedis(answer)) is verdict


async def test_warns_only_when_persistence_is_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="extauthz.persistence"):
        await warn_if_not_persistent(FakeRedis({"appendonly": "no", "save": ""}))
        await warn_if_not_persistent(FakeRedis({"appendonly": "yes", "save": ""}))
        await warn_if_not_persistent(FakeRedis(ResponseError("unknown command")))
    levels = [(r.levelno, "persistence off" in r.getMessage()) for r in caplog.records]
    assert levels == [(logging.WARNING, True), (logging.INFO, False)]
