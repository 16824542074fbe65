"""Model versions against the real OPA of the test stack (its own copy of rego/): the weighted
choice by bucket, and a catalog change through `push_to_opa` retiring cached decisions (the
revision the decision cache is keyed on hashes the data too)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator

import pytest

from extauthz.dev.demo import DIGIT_ZERO
from extauthz.dev.devstack import Stack
from extauthz.policy.cache import DecisionCache
from extauthz.policy.engine import PolicyEngine
from extauthz.policy.opa import OpaClient
from extauthz.policy.revision import RevisionWatcher
from extauthz.policy.rollout import StickyBucket, bucket_key
from extauthz.policy.versions import catalog_file, push_to_opa, read_catalog, shift
from extauthz.request import parse_check_request
from extauthz.types import Principal
from tests.unit.checkrequests import check_request

pytestmark = pytest.mark.integration

BEA = Principal("bea", ("analyst",), ("vision", "vision-beta"), "standard", "api_key", "k")


def digits_input(bucket: int, version: str = "") -> dict:
    path = f"/v2/models/digits/versions/{version}/infer" if version else "/v2/models/digits/infer"
    return {
        "request": {
            "method": "POST",
            "path": path,
            "model": "digits",
            "version": version,
            "action": "infer",
            "source_ip": "127.0.0.1",
            "bucket": bucket,
            "body": {"valid": True, "batch_size": 1, "inputs": 1, "outputs": [], "parameters": []},
        },
        "principal": {
            "subject": BEA.subject,
            "roles": list(BEA.roles),
            "projects": list(BEA.projects),
            "tier": "standard",
            "credential": "api_key",
        },
    }


@pytest.fixture
async def opa(stack: Stack) -> AsyncIterator[OpaClient]:
    client = OpaClient(stack.settings.opa_url, stack.settings.opa_decision_path, timeout=2)
    await client.start()
    original = read_catalog(catalog_file(stack.policy_dir))
    yield client
    push_to_opa(stack.settings.opa_url, original)  # the file was never changed
    await client.close()


async def test_weights_split_the_buckets(stack: Stack, opa: OpaClient) -> None:
    half = shift(read_catalog(catalog_file(stack.policy_dir)), "digits", "v2", 50)
    push_to_opa(stack.settings.opa_url, half)
    served = Counter([(await opa.decide(digits_input(b))).version for b in range(100)])
    assert served == Counter({"v1": 50, "v2": 50})
    assert (await opa.decide(digits_input(7, "v2"))).version == "v2"


async def test_a_catalog_push_changes_the_revision_and_the_cached_decision(
    stack: Stack, opa: OpaClient
) -> None:
    watcher = RevisionWatcher(opa, interval=3600, max_age=3600)
    engine = PolicyEngine(opa, watcher, DecisionCache(1000), bucket=StickyBucket(bucket_key(b"p")))
    body = {
        "inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP64", "data": DIGIT_ZERO}]
    }
    view = parse_check_request(check_request(body=json.dumps(body).encode()), 65536)
    before = await watcher.poll_once()
    first = await engine.decide(view, BEA)
    assert first.allow, first.reason
    assert first.version == "v1" and (await engine.decide(view, BEA)).source == "cache"

    promoted = json.loads(json.dumps(read_catalog(catalog_file(stack.policy_dir))))
    promoted["digits"]["versions"]["v1"]["weight"] = 0
    promoted["digits"]["versions"]["v2"]["weight"] = 100
    push_to_opa(stack.settings.opa_url, promoted)
    after = await watcher.poll_once()
    assert after != before  # the data is part of the revision
    second = await engine.decide(view, BEA)
    assert (second.version, second.source) == ("v2", "opa")
