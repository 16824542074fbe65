"""Dependencies stop: the gateway fails closed with the generic 503, then recovers.

Each test restarts what it stopped, so it can run in any order beside the others."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from extauthz.devstack import Stack
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
        for _ in range(3):
            assert_unavailable(gateway.post(URL, json=DIGITS, headers=headers))
    if component == "redis":
        # Redis runs without persistence: its keys are gone, so this key is now unknown
        headers = {"authorization": f"Bearer {make_key('alice', 'analyst', 'vision')}"}
    assert gateway.post(URL, json=DIGITS, headers=headers).status_code == 200
