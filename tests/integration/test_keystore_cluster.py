"""API keys on a real 3-master Redis Cluster: create, authenticate, list, revoke."""

from __future__ import annotations

import pytest

from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyStore
from extauthz.dev.devstack import Stack
from extauthz.types import Denied, Reason
from extauthz.wiring import redis_client

pytestmark = pytest.mark.integration


async def test_keys_work_on_redis_cluster(stack: Stack, cluster_url: str) -> None:
    settings = stack.settings.model_copy(
        update={"redis_url": cluster_url, "redis_cluster": True, "redis_timeout": 2.0}
    )
    redis = redis_client(settings)
    try:
        store = KeyStore(redis, b"pepper")
        record, key = await store.create("carol", ("analyst",), ("vision",), "standard")
        auth = ApiKeyAuthenticator(store, b"pepper", cache_ttl=0)
        assert (await auth.authenticate(key)).subject == "carol"
        assert record.key_id in [r.key_id for r in await store.list()]
        assert await store.revoke(record.key_id)
        with pytest.raises(Denied) as info:
            await auth.authenticate(key)
        assert info.value.reason is Reason.KEY_REVOKED
    finally:
        await redis.aclose()
