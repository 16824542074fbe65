"""build_service(settings): the one place that names concrete classes."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyStore
from extauthz.authn.authenticator import Authenticator
from extauthz.decisionlog import DecisionLog
from extauthz.handler import CheckHandler
from extauthz.limits.limiter import Limiter
from extauthz.policy.opa import OpaClient
from extauthz.settings import Settings


def key_pepper(settings: Settings) -> bytes:
    """The API-key hashing secret: the setting, else a 0600 file created on first use."""
    if settings.key_pepper.get_secret_value():
        return settings.key_pepper.get_secret_value().encode()
    path: Path = settings.key_pepper_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def redis_client(settings: Settings) -> aioredis.Redis:
    # No client-side retries: the decision has one budget, and failing closed beats waiting.
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 0),
        max_connections=64,
    )


@dataclass
class Service:
    handler: CheckHandler
    redis: aioredis.Redis
    opa: OpaClient
    decision_log: DecisionLog

    async def start(self) -> None:
        self.decision_log.start()
        await self.opa.start()

    async def close(self) -> None:
        await self.opa.close()
        await self.redis.aclose()
        self.decision_log.stop()


def build_service(settings: Settings) -> Service:
    redis = redis_client(settings)
    pepper = key_pepper(settings)
    api_keys = ApiKeyAuthenticator(
        KeyStore(redis, pepper),
        pepper,
        cache_ttl=settings.key_cache_ttl,
        cache_size=settings.key_cache_size,
    )
    opa = OpaClient(settings.opa_url, settings.opa_decision_path, settings.opa_timeout)
    decision_log = DecisionLog(settings.decision_log)
    handler = CheckHandler(
        Authenticator(api_keys),
        opa,
        Limiter(redis, settings.redis_timeout),
        decision_log,
        settings.max_body_bytes,
    )
    return Service(handler=handler, redis=redis, opa=opa, decision_log=decision_log)
