from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pytest

from extauthz.dev.devstack import Stack
from extauthz.dev.runner import free_ports
from tests.conftest import stack_settings

Keys = Callable[..., str]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole stack (Redis, OPA, MLServer, extauthz, Envoy); Redis without AOF, for speed."""
    run_dir = tmp_path_factory.mktemp("stack")
    stack = Stack(stack_settings(run_dir), floor_port=free_ports(1)[0], redis_aof=False)
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real `extauthz` CLI against the test stack."""
    env = {**os.environ, **stack.service_env()}
    return subprocess.run(
        [sys.executable, "-m", "extauthz", *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )


@pytest.fixture(scope="session")
def make_key(stack: Stack) -> Keys:
    """Create an API key through the CLI; returns the key (shown once)."""

    def make(
        subject: str, roles: str, projects: str, tier: str = "standard", expires_in: str = ""
    ) -> str:
        args = [
            "keys",
            "create",
            "--subject",
            subject,
            "--roles",
            roles,
            "--projects",
            projects,
            "--tier",
            tier,
            "--json",
        ]
        if expires_in:
            args += ["--expires-in", expires_in]
        return json.loads(cli(stack, *args).stdout)["key"]

    return make


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.envoy_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def behind_a_proxy(stack: Stack) -> Iterator[httpx.Client]:
    """The module's stack with its extauthz restarted behind one trusted proxy, 127.0.0.1 (the
    test client), so each client may name its own network in X-Forwarded-For; restored after."""
    stack.stop("extauthz")
    update = {"trusted_hops": 1, "trusted_proxies": "127.0.0.1/32"}
    proxied = Stack(stack.settings.model_copy(update=update), redis_aof=False)
    try:
        proxied.up(["extauthz"])
        with httpx.Client(base_url=stack.envoy_url, timeout=10) as client:
            yield client
    finally:
        proxied.stop("extauthz")
        stack.up(["extauthz"])
