"""Finding 3: a tenant floods distinct denied requests (each body a different 40 KB list of
parameter names) through the real Check handler, real OPA and real Redis. Memory must stay
bounded, and the tenant must not make the gateway ask OPA without limit.

Run with `-s` to see the measured growth (the figures in the README come from this test)."""

from __future__ import annotations

import gc
import json
import os
import secrets
from typing import Any

import pytest

from extauthz.authn.apikeys import KeyStore
from extauthz.dev.devstack import Stack
from extauthz.wiring import build_service, key_pepper, redis_client
from tests.unit.checkrequests import check_request

pytestmark = pytest.mark.integration
FLOOD = 2_000


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def denied_body(i: int) -> bytes:
    """A well-formed digits request with ~800 distinct unlisted parameter names (~40 KB)."""
    params = {f"p{i:05d}_{j:04d}_{'x' * 36}": 1 for j in range(800)}
    body = {
        "inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP64", "data": [0] * 64}],
        "parameters": params,
    }
    return json.dumps(body).encode()


async def flood(stack: Stack, source: str, **settings: Any) -> dict[str, Any]:
    s = stack.settings.model_copy(
        update={
            "decision_log": os.devnull,
            "opa_timeout": 5.0,
            "shadow_decision_path": "",
            **settings,
        }
    )
    redis = redis_client(s)
    _, key = await KeyStore(redis, key_pepper(s)).create(
        f"flood-{secrets.token_hex(4)}", ("analyst",), ("vision",), "standard"
    )
    await redis.aclose()
    service = build_service(s)
    await service.start()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    bodies = [denied_body(i) for i in range(FLOOD)]
    statuses: dict[int, int] = {}
    opa_before = _opa_queries()
    try:
        gc.collect()
        before = rss_mib()
        for i, body in enumerate(bodies):
            req = check_request(headers=headers, body=body, source_ip=source, request_id=str(i))
            resp = await service.handler.check(req)
            code = resp.denied_response.status.code or 200
            statuses[code] = statuses.get(code, 0) + 1
        gc.collect()
        grown = rss_mib() - before
    finally:
        await service.close()
    return {"grown_mib": grown, "statuses": statuses, "opa_queries": _opa_queries() - opa_before}


def _opa_queries() -> float:
    """OPA POSTs this process made (the count of the OPA latency histogram)."""
    from extauthz.metrics import OPA_SECONDS

    samples = OPA_SECONDS.collect()[0].samples
    return next(x.value for x in samples if x.name.endswith("_count"))


async def test_a_flood_of_distinct_denials_stays_within_the_cache_bound(stack: Stack) -> None:
    """The decision cache alone (denial counting off): entries cost a digest and a decision,
    never the input, and the cache holds at most its byte bound."""
    result = await flood(stack, "203.0.113.7", policy_denial_limit=0, policy_denial_prefix_limit=0)
    print(f"\ncache only: {FLOOD} distinct denials -> {result}")
    assert result["statuses"] == {403: FLOOD}
    assert result["grown_mib"] < 16, result


async def test_policy_denials_quarantine_the_tenant_before_opa_is_asked(stack: Stack) -> None:
    """With the default limits: past 60 denials a minute the subject is quarantined, and the
    rest of the flood is answered 429 in-process or by the decision's Redis call; OPA is asked
    at most once per over-limit-cache age, not 2,000 times."""
    limit = 60
    result = await flood(
        stack, "203.0.113.8", policy_denial_limit=limit, policy_denial_prefix_limit=0
    )
    print(f"\nwith denial limits: {FLOOD} distinct denials -> {result}")
    assert result["statuses"].get(403, 0) <= limit + 1
    assert result["statuses"].get(429, 0) >= FLOOD - limit - 1
    assert result["opa_queries"] <= limit + 10, result
    assert result["grown_mib"] < 16, result
