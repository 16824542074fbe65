"""The analytics pipeline on a real 3-master Redis Cluster: the emitter's pipelined XADDs to
shard streams on several slots, shard leases and takeover, per-tenant routing, and a response
written into the subject's risk hash (where the decision's one Lua call reads it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from extauthz.analytics.actions import ActionLog, ActionStore
from extauthz.dev.devstack import Stack
from extauthz.store.schema import analytics_owner_key as owner_key
from extauthz.store.schema import analytics_stream as stream_key
from extauthz.store.schema import quarantine_key, risk_key, subject_tag
from extauthz.wiring import redis_client
from tests.integration.test_analytics import (
    SHARDS,
    _worker,
    routed_to_one_owner,
    sybil_scenario,
)

pytestmark = pytest.mark.integration


@pytest.fixture
async def cluster(stack: Stack, cluster_url: str) -> AsyncIterator[Any]:
    client = redis_client(
        stack.settings.model_copy(
            update={"redis_url": cluster_url, "redis_cluster": True, "redis_timeout": 2.0}
        )
    )
    yield client
    await client.aclose()


async def test_shards_spread_over_slots_are_leased_routed_and_taken_over(
    cluster: Any, stack: Stack, tmp_path: Any
) -> None:
    slots = {await _slot(cluster, stream_key(s)) for s in range(SHARDS)}
    assert len(slots) > 1  # the shard streams really are on several slots
    one, two = _worker(cluster, stack, tmp_path, "one"), _worker(cluster, stack, tmp_path, "two")
    await routed_to_one_owner(cluster, one, two, "cl-tenant")
    # one dies: its leases lapse and two takes every shard over
    await asyncio.sleep(3.2)
    await two.claim()
    assert two.owned == set(range(SHARDS))
    for shard in range(SHARDS):
        assert await cluster.get(owner_key(shard)) == b"two"
    await two.release_all()
    await one.close()
    await two.close()


async def test_a_response_lands_where_the_decision_reads_and_clear_undoes_it(
    cluster: Any, tmp_path: Any
) -> None:
    store = ActionStore(cluster, ActionLog(str(tmp_path / "decisions.log")))
    subject = "cl-mallory"
    response = {"level": 4, "risk": 0.5, "degrade": 2, "quarantine": 60, "ttl": 600}
    await store.apply(subject, "digits", response, {"ood": 0.9}, {"rows": 50})
    await store.record(subject, "digits", {"ood": 0.9}, {"rows": 50})
    risk = await cluster.hgetall(risk_key(subject))
    assert float(risk[b"multiplier"]) == 0.5 and risk[b"degrade"] == b"2"
    assert await cluster.exists(quarantine_key(subject_tag(subject)))
    shown = await store.show(subject)
    assert shown["actions"][0]["level"] == 4 and shown["quarantine"]
    await store.clear(subject)
    assert not await cluster.exists(risk_key(subject), quarantine_key(subject_tag(subject)))


async def test_sybils_sharing_fingerprints_are_counted_across_the_cluster(
    cluster: Any, stack: Stack, tmp_path: Any
) -> None:
    """The network and fingerprint HyperLogLogs (PFADD/PFCOUNT per tag) on a cluster."""
    await sybil_scenario(cluster, stack, tmp_path)


async def _slot(client: Any, key: str) -> int:
    return int(await client.execute_command("CLUSTER KEYSLOT", key))
