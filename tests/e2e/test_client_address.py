"""One client address through real Envoy: behind a trusted proxy (EXTAUTHZ_TRUSTED_HOPS=1,
EXTAUTHZ_TRUSTED_PROXIES=127.0.0.1/32) the address the proxy vouches for in X-Forwarded-For is
the one the API-key CIDR check, the policy's network check, the limiter and the decision log all
see (issue 11, finding 9); from any other peer the header is ignored.

The test client on 127.0.0.1 plays the trusted proxy: it sends `X-Forwarded-For: <client>` and
Envoy (use_remote_address) appends the peer it saw, as it would a proxy's."""

from __future__ import annotations

import json
import secrets

import httpx
import pytest

from extauthz.dev.devstack import Stack
from extauthz.response import BODIES
from extauthz.types import Status
from tests.e2e.conftest import cli
from tests.e2e.payloads import CANCER, DIGITS
from tests.e2e.test_gateway import wait_for_decision

pytestmark = pytest.mark.e2e

CLIENT = "203.0.113.7"  # outside every range the shipped policy and the keys below trust
PREFIX = "203.0.113.0"


def key(stack: Stack, subject: str, roles: str, projects: str, cidrs: str = "") -> str:
    args = ["keys", "create", "--subject", subject, "--roles", roles, "--projects", projects]
    if cidrs:
        args += ["--cidrs", cidrs]
    return json.loads(cli(stack, *args, "--json").stdout)["key"]


def via(client: str | None = None) -> dict[str, str]:
    return {"x-forwarded-for": client} if client else {}


def logged(stack: Stack, resp: httpx.Response) -> dict:
    return wait_for_decision(stack, resp.headers["x-request-id"])


def test_the_api_key_cidr_check_sees_the_forwarded_client(
    behind_a_proxy: httpx.Client, stack: Stack
) -> None:
    only_there = key(stack, f"cidr-{secrets.token_hex(3)}", "analyst", "vision", f"{PREFIX}/24")
    headers = {"x-api-key": only_there}
    resp = behind_a_proxy.post(
        "/v2/models/digits/infer", json=DIGITS, headers=headers | via(CLIENT)
    )
    assert resp.status_code == 200, resp.text
    assert logged(stack, resp)["source_ip"] == CLIENT
    # the proxy's own address (no forwarded client) is not inside the key's range
    resp = behind_a_proxy.post("/v2/models/digits/infer", json=DIGITS, headers=headers)
    assert resp.status_code == 401 and resp.content == BODIES[Status.UNAUTHENTICATED]
    assert logged(stack, resp)["reason"] == "key_source_not_allowed"


def test_the_policy_network_check_sees_the_forwarded_client(
    behind_a_proxy: httpx.Client, stack: Stack
) -> None:
    """clinical models take callers from 127.0.0.0/8 and 10.20.0.0/16 only: a client forwarded
    from 203.0.113.7 is outside, even though the proxy's own address is inside; what the client
    itself wrote left of the proxy's entry (10.20.0.5) does not count."""
    bob = {"x-api-key": key(stack, f"bob-{secrets.token_hex(3)}", "clinician", "clinical")}
    assert (
        behind_a_proxy.post("/v2/models/cancer/infer", json=CANCER, headers=bob).status_code == 200
    )
    for forwarded in (CLIENT, f"10.20.0.5, {CLIENT}"):
        resp = behind_a_proxy.post(
            "/v2/models/cancer/infer", json=CANCER, headers=bob | via(forwarded)
        )
        assert resp.status_code == 403 and resp.content == BODIES[Status.FORBIDDEN]
        record = logged(stack, resp)
        assert (record["policy_reason"], record["source_ip"]) == ("network_not_allowed", CLIENT)


def test_the_limiter_counts_the_same_client(behind_a_proxy: httpx.Client, stack: Stack) -> None:
    alice = {"x-api-key": key(stack, f"alice-{secrets.token_hex(3)}", "analyst", "vision")}
    cli(stack, "quarantine", "add", "--prefix", PREFIX, "--ttl", "5m", "--cause", "test")
    try:
        resp = behind_a_proxy.post(
            "/v2/models/digits/infer", json=DIGITS, headers=alice | via(CLIENT)
        )
        assert resp.status_code == 429 and resp.content == BODIES[Status.RATE_LIMITED]
        record = logged(stack, resp)
        assert (record["reason"], record["source_ip"]) == ("quarantined", CLIENT)
        # the proxy's other clients are not in that network
        other = behind_a_proxy.post(
            "/v2/models/digits/infer", json=DIGITS, headers=alice | via("198.51.100.4")
        )
        assert other.status_code == 200, other.text
    finally:
        cli(stack, "quarantine", "release", "--prefix", PREFIX)


def test_a_peer_that_is_no_trusted_proxy_cannot_name_the_client(
    behind_a_proxy: httpx.Client, stack: Stack
) -> None:
    """127.0.0.3 is not in EXTAUTHZ_TRUSTED_PROXIES: its X-Forwarded-For names nobody."""
    # another network than the test before quarantined: a release takes up to the local
    # over-limit cache's max age (2 s) to reach a worker that saw the quarantine
    only_there = key(stack, f"spoof-{secrets.token_hex(3)}", "analyst", "vision", "198.51.100.0/24")
    headers = {"x-api-key": only_there} | via("198.51.100.77")
    transport = httpx.HTTPTransport(local_address="127.0.0.3")
    with httpx.Client(base_url=stack.envoy_url, timeout=10, transport=transport) as direct:
        resp = direct.post("/v2/models/digits/infer", json=DIGITS, headers=headers)
    assert resp.status_code == 401 and resp.content == BODIES[Status.UNAUTHENTICATED]
    record = logged(stack, resp)
    assert (record["reason"], record["source_ip"]) == ("key_source_not_allowed", "127.0.0.3")
    # the same request through the trusted proxy is the client's
    resp = behind_a_proxy.post("/v2/models/digits/infer", json=DIGITS, headers=headers)
    assert resp.status_code == 200, resp.text
