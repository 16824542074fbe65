"""Bounded abuse and degraded modes through real Envoy (issue 11, findings 3, 5, 6).

Each test restarts what it stopped, so it can run in any order beside the others."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from extauthz.dev.devstack import Stack
from extauthz.response import BODIES
from extauthz.types import Status
from tests.e2e.conftest import Keys, cli
from tests.e2e.payloads import DIGITS, IRIS, infer
from tests.e2e.test_limits import assert_429, detail
from tests.e2e.test_outages import assert_unavailable, stopped

pytestmark = pytest.mark.e2e
IRIS_URL = "/v2/models/iris/infer"
CANCER_URL = "/v2/models/cancer/infer"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_tenant_cannot_make_the_gateway_ask_opa_without_limit(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    """Finding 3: distinct denied requests (a vision analyst probing a clinical model) count
    against the subject's policy-denial window; past it, every request of the subject is the
    generic 429 — answered before OPA is asked."""
    subject = f"prober-{secrets.token_hex(3)}"
    key = make_key(subject, "analyst", "vision")
    assert gateway.post("/v2/models/digits/infer", json=DIGITS, headers=bearer(key)).is_success
    limit = stack.settings.policy_denial_limit
    for i in range(limit):
        body = {**DIGITS, "parameters": {f"probe_{i}": 1}}
        resp = gateway.post(CANCER_URL, json=body, headers=bearer(key))
        assert resp.status_code == 403 and resp.content == BODIES[Status.FORBIDDEN]
    over = gateway.post(CANCER_URL, json=DIGITS, headers=bearer(key))
    assert_429(over)
    assert detail(stack, over)["reason"] == "quarantined"
    # the subject's allowed requests too, until the quarantine ends
    assert_429(gateway.post("/v2/models/digits/infer", json=DIGITS, headers=bearer(key)))
    listing = cli(stack, "quarantine", "list").stdout
    assert subject in listing and "policy_denials" in listing
    cli(stack, "quarantine", "release", "--subject", subject)


def wait_until_opa_is_unconfirmed(stack: Stack) -> None:
    s = stack.settings
    time.sleep(s.revision_max_age + s.revision_poll_interval + 0.2)


def test_opa_down_fail_open_serves_only_what_opa_decided(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    """Finding 5: while OPA is down a fail-open model is served only for inputs OPA decided
    under the last revision: its batch cap, its denials and unseen callers still hold."""
    key, stranger = (make_key(f"fo-{secrets.token_hex(3)}", "analyst", "vision") for _ in "ab")
    big = infer([5.1, 3.5, 1.4, 0.2] * 40)
    big["inputs"][0]["shape"] = [40, 4]  # over iris's batch cap of 32
    bigger = infer([5.1, 3.5, 1.4, 0.2] * 48)
    bigger["inputs"][0]["shape"] = [48, 4]
    assert gateway.post(IRIS_URL, json=IRIS, headers=bearer(key)).status_code == 200
    assert gateway.post(IRIS_URL, json=big, headers=bearer(key)).status_code == 403
    with stopped(stack, "opa"):
        wait_until_opa_is_unconfirmed(stack)
        ok = gateway.post(IRIS_URL, json=IRIS, headers=bearer(key))
        assert ok.status_code == 200 and "ratelimit" in ok.headers
        assert gateway.post(IRIS_URL, json=big, headers=bearer(key)).status_code == 403
        # never decided by OPA: a batch over the cap (main served 48 rows), another caller
        assert_unavailable(gateway.post(IRIS_URL, json=bigger, headers=bearer(key)))
        assert_unavailable(gateway.post(IRIS_URL, json=IRIS, headers=bearer(stranger)))


def test_redis_down_fallback_keeps_revocations_and_quarantines(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    """Finding 6: the fail-open model's fallback limiter refuses what Redis would: a key this
    worker saw revoked, a subject it saw quarantined (main served both while Redis was down)."""
    revoked = make_key(f"rv-{secrets.token_hex(3)}", "analyst", "vision")
    subject = f"qs-{secrets.token_hex(3)}"
    quarantined = make_key(subject, "analyst", "vision")
    fine = make_key(f"ok-{secrets.token_hex(3)}", "analyst", "vision")
    for key in (revoked, quarantined, fine):
        assert gateway.post(IRIS_URL, json=IRIS, headers=bearer(key)).status_code == 200
    cli(stack, "keys", "revoke", revoked.split(".")[0].removeprefix("eak_"))
    cli(stack, "quarantine", "add", "--subject", subject, "--ttl", "10m", "--cause", "test")
    resp = gateway.post(IRIS_URL, json=IRIS, headers=bearer(revoked))
    assert resp.status_code == 401  # the decision's Redis call: the worker learns it
    assert_429(gateway.post(IRIS_URL, json=IRIS, headers=bearer(quarantined)))
    with stopped(stack, "redis"):
        time.sleep(stack.settings.overlimit_cache_max_age + 0.2)  # only its memory is left
        served = gateway.post(IRIS_URL, json=IRIS, headers=bearer(fine))
        assert served.status_code == 200 and detail(stack, served)["detail"] == "fallback"
        resp = gateway.post(IRIS_URL, json=IRIS, headers=bearer(revoked))
        assert resp.status_code == 401 and resp.content == BODIES[Status.UNAUTHENTICATED]
        assert 500 <= assert_429(gateway.post(IRIS_URL, json=IRIS, headers=bearer(quarantined)))
