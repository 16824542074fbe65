"""Dependencies stop: the gateway fails closed with the generic 503, then recovers.

Each test restarts what it stopped, so it can run in any order beside the others."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from extauthz.dev.devstack import Stack
from extauthz.response import BODIES
from extauthz.types import Status
from tests.e2e.conftest import Keys
from tests.e2e.payloads import DIGITS

pytestmark = pytest.mark.e2e
URL = "/v2/models/digits/infer"


@contextmanager
def stopped(stack: Stack, name: str) -> Iterator[None]:
    stack.stop(name)
    try:
        yield
    finally:
        stack.up([name])


def assert_unavailable(resp: httpx.Response) -> None:
    assert resp.status_code == 503
    assert resp.content == BODIES[Status.UNAVAILABLE]
    assert resp.headers["content-type"] == "application/json"


@pytest.mark.parametrize("component", ["opa", "redis", "extauthz", "model"])
def test_dependency_down_is_503_then_recovers(
    component: str, stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    key = make_key("alice", "analyst", "vision")
    headers = {"authorization": f"Bearer {key}"}
    assert gateway.post(URL, json=DIGITS, headers=headers).status_code == 200  # warm: key cached
    with stopped(stack, component):
        if component == "opa":
            # decisions cached under a revision confirmed < revision_max_age ago stay valid
            s = stack.settings
            time.sleep(s.revision_max_age + s.revision_poll_interval + 0.2)
        for _ in range(3):
            assert_unavailable(gateway.post(URL, json=DIGITS, headers=headers))
    if component == "redis":
        # Redis runs without persistence: its keys are gone, so this key is now unknown
        headers = {"authorization": f"Bearer {make_key('alice', 'analyst', 'vision')}"}
    assert gateway.post(URL, json=DIGITS, headers=headers).status_code == 200


def test_opa_down_still_serves_public_fail_open_models_only(
    stack: Stack, gateway: httpx.Client, make_key: Keys
) -> None:
    from tests.e2e.payloads import IRIS

    headers = {"authorization": f"Bearer {make_key('alice', 'analyst', 'vision')}"}
    assert gateway.post("/v2/models/iris/infer", json=IRIS, headers=headers).status_code == 200
    with stopped(stack, "opa"):
        s = stack.settings
        time.sleep(s.revision_max_age + s.revision_poll_interval + 0.2)
        iris = gateway.post("/v2/models/iris/infer", json=IRIS, headers=headers)
        assert iris.status_code == 200 and iris.json()["outputs"][0]["data"] == [0]
        assert "ratelimit" in iris.headers  # the tier's quota still applies
        assert_unavailable(gateway.post(URL, json=DIGITS, headers=headers))


def test_opa_stopped_under_load_fails_closed_within_the_revision_bound(
    stack: Stack, make_key: Keys
) -> None:
    """8 concurrent clients; OPA is stopped mid-run. Every answer is a 200 or the generic 503,
    and no request for a fail-closed model is allowed once the cached revision is too old."""
    import concurrent.futures

    keys = [make_key(f"load-{i}", "analyst", "vision", tier="bench") for i in range(8)]
    results: list[tuple[float, int, bytes]] = []
    stop_at: list[float] = []

    def client(key: str, until: float) -> list[tuple[float, int, bytes]]:
        out = []
        with httpx.Client(base_url=stack.envoy_url, timeout=5) as c:
            while time.monotonic() < until:
                r = c.post(URL, json=DIGITS, headers={"authorization": f"Bearer {key}"})
                out.append((time.monotonic(), r.status_code, r.content))
        return out

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(keys)) as pool:
        futures = [pool.submit(client, k, start + 4.0) for k in keys]
        time.sleep(1.0)
        stop_at.append(time.monotonic())
        stack.stop("opa")
        for f in futures:
            results.extend(f.result())
    try:
        s = stack.settings
        bound = stop_at[0] + s.revision_max_age + s.revision_poll_interval + 0.3
        codes = {code for _, code, _ in results}
        assert codes <= {200, 503}, codes
        assert any(code == 200 for t, code, _ in results if t < stop_at[0])
        late = [(t, code) for t, code, _ in results if t > bound]
        assert late and all(code == 503 for _, code in late)
        assert all(body == BODIES[Status.UNAVAILABLE] for _, code, body in results if code == 503)
    finally:
        stack.up(["opa"])
