"""Finding 6: while Redis is down, the fallback limiter of a fail-open model still refuses
what Redis would have: revoked keys and devices, quarantines, replayed DPoP proofs — from what
the worker learned — and refuses (503) what it does not know.

"Redis down" is real: the limiter talks to the stack's Redis through a TCP proxy the test
stops (the shared Redis itself keeps serving the other tests)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from extauthz.dev.devstack import Stack
from extauthz.limits.limiter import Limiter, LimiterConfig
from extauthz.limits.throttle import ThrottleStore
from extauthz.threat import ThreatWatcher
from extauthz.types import Denied, Principal, Reason, Status
from extauthz.wiring import redis_client
from tests.integration.conftest import Clock
from tests.integration.test_limiter import MINUTE5, policy, principal, view, with_proof

pytestmark = pytest.mark.integration
OPEN = policy(MINUTE5, "open")


class Proxy:
    """A TCP proxy to Redis that can be stopped: every connection through it is cut."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self._writers:
            w.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def real(stack: Stack) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(stack.settings.model_copy(update={"redis_timeout": 2.0}))
    yield client
    await client.aclose()


@pytest.fixture
async def outage(stack: Stack) -> AsyncIterator[tuple[Proxy, aioredis.Redis]]:
    """(proxy, a client through it); stop the proxy to take Redis away from the limiter."""
    url = stack.settings.redis_url.removeprefix("redis://").split("/")[0]
    host, port = url.split(":")
    proxy = Proxy(host, int(port))
    local = await proxy.start()
    settings = stack.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{local}/0", "redis_timeout": 0.5}
    )
    client = redis_client(settings)
    yield proxy, client
    await client.aclose()
    await proxy.stop()


def limiter(client: aioredis.Redis, clock: Clock, **config: Any) -> Limiter:
    return Limiter(
        client,
        timeout=0.5,
        clock=clock,
        config=LimiterConfig(**config),
        threat=ThreatWatcher(client, clock=clock),
    )


async def refused(lim: Limiter, p: Principal) -> Denied:
    with pytest.raises(Denied) as info:
        await lim.check(p, MINUTE5, view(), OPEN)
    return info.value


async def test_revoked_and_unknown_credentials_are_refused_in_fallback(
    outage: tuple[Proxy, aioredis.Redis], real: aioredis.Redis
) -> None:
    proxy, client = outage
    clock = Clock(time.time())
    lim = limiter(client, clock, fallback_max_age=60)
    revoked, active, unseen = [await principal(real) for _ in range(3)]
    assert (await lim.check(revoked, MINUTE5, view(), OPEN)).allowed
    assert (await lim.check(active, MINUTE5, view(), OPEN)).allowed
    await real.hset(revoked.state_key, "status", "revoked")  # `extauthz keys revoke`
    assert (await refused(lim, revoked)).reason is Reason.KEY_REVOKED  # learned from Redis
    await proxy.stop()
    # Redis is gone: the revoked key stays refused (main served it from the fallback)
    denied = await refused(lim, revoked)
    assert (denied.status, denied.reason) == (Status.UNAUTHENTICATED, Reason.KEY_REVOKED)
    served = await lim.check(active, MINUTE5, view(), OPEN)
    assert served.allowed and served.detail == "fallback"
    denied = await refused(lim, unseen)  # never seen active: cannot be vouched for
    assert (denied.status, denied.reason) == (Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE)
    clock.now += 61  # the last confirmation is too old now
    assert (await refused(lim, active)).status is Status.UNAVAILABLE


async def test_known_quarantines_hold_in_fallback(
    outage: tuple[Proxy, aioredis.Redis], real: aioredis.Redis
) -> None:
    proxy, client = outage
    clock = Clock(time.time())
    lim = limiter(client, clock)
    p = await principal(real)
    assert (await lim.check(p, MINUTE5, view(), OPEN)).allowed
    await ThrottleStore(real).quarantine("subject", p.subject, 600, "probing")
    assert not (await lim.check(p, MINUTE5, view(), OPEN)).allowed  # learned: quarantined
    clock.now += 3  # past the over-limit cache's trusted age: only KnownState remembers
    await proxy.stop()
    denied = await refused(lim, p)
    assert (denied.status, denied.reason) == (Status.RATE_LIMITED, Reason.QUARANTINED)
    assert denied.limits is not None and denied.limits.retry_after > 500
    assert denied.detail == "quarantine subject (fallback)"
    await ThrottleStore(real).release("subject", p.subject)


async def test_dpop_proofs_are_single_use_in_fallback(
    outage: tuple[Proxy, aioredis.Redis], real: aioredis.Redis
) -> None:
    proxy, client = outage
    clock = Clock(time.time())
    lim = limiter(client, clock)
    multi = limiter(client, clock, single_worker=False)
    device = await principal(real, device=True)
    seen = with_proof(device)
    assert (await lim.check(seen, MINUTE5, view(), OPEN)).allowed  # the jti spent in Redis
    await proxy.stop()
    assert (await refused(lim, seen)).reason is Reason.DPOP_REPLAY  # remembered in-process
    fresh = with_proof(device)
    assert (await lim.check(fresh, MINUTE5, view(), OPEN)).allowed
    assert (await refused(lim, fresh)).reason is Reason.DPOP_REPLAY  # spent by the fallback
    # with several workers a proof may have been spent at another one: refused
    assert (await refused(multi, with_proof(device))).status is Status.UNAVAILABLE
