"""The audit trail's degraded mode with real Redis and OPA: a spool that cannot be written (a
full disk, simulated by making the spool's append fail with ENOSPC) fails the service closed
with EXTAUTHZ_AUDIT_REQUIRED, and serves again once the held records are written."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from typing import Any

import pytest

from extauthz.authn.apikeys import KeyStore
from extauthz.dev.devstack import Stack
from extauthz.types import Reason
from extauthz.wiring import build_service, key_pepper, redis_client
from tests.e2e.payloads import DIGITS
from tests.unit.checkrequests import check_request

pytestmark = pytest.mark.integration


async def _service(stack: Stack, tmp: Any, **settings: Any):  # type: ignore[no-untyped-def]
    s = stack.settings.model_copy(
        update={
            "decision_log": str(tmp / "decisions.log"),
            "audit_spool_dir": str(tmp / "spool"),
            "audit_flush_interval": 0.01,
            "audit_sink": "none",
            "shadow_decision_path": "",
            "analytics_events": False,
            **settings,
        }
    )
    redis = redis_client(s)
    _, key = await KeyStore(redis, key_pepper(s)).create(
        f"audit-{secrets.token_hex(4)}", ("analyst",), ("vision",), "bench"
    )
    await redis.aclose()
    service = build_service(s)
    await service.start()
    return service, {"authorization": f"Bearer {key}", "content-type": "application/json"}


async def _status(service: Any, headers: dict[str, str], i: int) -> int:
    body = json.dumps(DIGITS).encode()
    resp = await service.handler.check(check_request(headers=headers, body=body, request_id=str(i)))
    return resp.denied_response.status.code or 200


def _full_disk(service: Any) -> dict[str, bool]:
    """Make the audit spool's writes fail as on a full disk until `state["full"]` is False."""
    spool = service.decision_log._audit.spool
    real = spool.append
    state = {"full": True}

    def append(data: bytes, last_seq: int) -> None:
        if state["full"]:
            raise OSError(28, os.strerror(28))
        real(data, last_seq)

    spool.append = append
    return state


async def _until(predicate, within: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_required_audit_trail_that_cannot_record_fails_closed(
    stack: Stack, tmp_path: Any
) -> None:
    service, headers = await _service(stack, tmp_path)
    try:
        assert await _status(service, headers, 0) == 200
        disk = _full_disk(service)
        n = iter(range(1, 10_000))

        async def refused() -> bool:
            return await _status(service, headers, next(n)) == 503

        # the first failed spool write turns the service to 503 (the decisions just before it
        # are held in memory and written first once the disk has room)
        assert await _until(refused)
        log = service.decision_log
        assert log.refusing
        disk["full"] = False

        async def served() -> bool:
            return await _status(service, headers, next(n)) == 200

        assert await _until(served)
        assert not log.refusing
    finally:
        await service.close()
    records = [json.loads(x) for x in (tmp_path / "decisions.log").read_text().splitlines()]
    assert Reason.AUDIT_UNAVAILABLE.value in {r["reason"] for r in records}
    # every decision the service answered 200 is in the chain (held, then written)
    chained = b"".join(p.read_bytes() for p in sorted((tmp_path / "spool" / "w0").glob("*.seg")))
    ids = {json.loads(x).get("request_id") for x in chained.splitlines()}
    served_ids = {r["request_id"] for r in records if r["status"] == 200}
    assert served_ids and served_ids <= ids


async def test_an_optional_audit_trail_serves_and_records_what_it_lost(
    stack: Stack, tmp_path: Any
) -> None:
    service, headers = await _service(
        stack, tmp_path, audit_required=False, audit_max_pending_records=5
    )
    try:
        disk = _full_disk(service)
        statuses = [await _status(service, headers, i) for i in range(40)]
        await asyncio.sleep(0.1)  # the writer thread meets the full disk
        statuses += [await _status(service, headers, i) for i in range(40, 80)]
        assert set(statuses) == {200}  # served throughout
        disk["full"] = False
        await asyncio.sleep(0.1)
        assert await _status(service, headers, 80) == 200
        await asyncio.sleep(0.1)
    finally:
        await service.close()
    chained = b"".join(p.read_bytes() for p in sorted((tmp_path / "spool" / "w0").glob("*.seg")))
    docs = [json.loads(x) for x in chained.splitlines()]
    lost = [d for d in docs if d.get("kind") == "lost"]
    decisions = [d for d in docs if "request_id" in d]
    assert len(lost) == 1 and lost[0]["records"] > 0
    assert len(decisions) + lost[0]["records"] == 81  # each decision chained, or counted lost
