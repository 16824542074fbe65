"""Quotas through real Envoy: per key, per source network, bursts, Retry-After, quarantine,
threat levels, credential stuffing, a Redis outage, and two workers sharing one limit.

Clients bind to their own loopback networks (127.0.N.x) where a test needs a /24 of its own:
Envoy reports that peer address, and the limiter counts per /24."""

from __future__ import annotations

import concurrent.futures
import json
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import httpx
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from extauthz.dev.devstack import Stack
from extauthz.response import BODIES
from extauthz.types import Status
from tests.e2e.conftest import Keys, cli
from tests.e2e.payloads import DIGITS, IRIS
from tests.e2e.test_gateway import wait_for_decision
from tests.e2e.test_policy import metric
from tests.unit.checkrequests import check_request

pytestmark = pytest.mark.e2e

DIGITS_URL = "/v2/models/digits/infer"
IRIS_URL = "/v2/models/iris/infer"


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@contextmanager
def client_from(stack: Stack, address: str) -> Iterator[httpx.Client]:
    """An HTTP client whose connections come from `address` (any 127.x.y.z is loopback)."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=stack.envoy_url, timeout=10, transport=transport) as client:
        yield client


def net(n: int) -> str:
    return f"127.0.{n}"


def assert_429(resp: httpx.Response) -> int:
    assert resp.status_code == 429, resp.text
    assert resp.content == BODIES[Status.RATE_LIMITED]
    retry = int(resp.headers["retry-after"])
    assert retry >= 1
    return retry


def detail(stack: Stack, resp: httpx.Response) -> dict:
    return wait_for_decision(stack, resp.headers["x-request-id"])


# ------------------------------------------------------------------ windows


def test_a_network_window_holds_across_keys_and_rotation(stack: Stack, make_key: Keys) -> None:
    """trial: 5 a minute per key and 30 a minute per /24. Six keys from one network use up
    the network; a seventh key, or a rotated one, gets 429; another network does not."""
    with client_from(stack, f"{net(11)}.9") as client:
        for i in range(6):
            key = make_key(f"minter-{i}", "analyst", "vision", tier="trial")
            codes = [client.post(DIGITS_URL, json=DIGITS, headers=bearer(key)).status_code]
            codes += [client.post(DIGITS_URL, json=DIGITS, headers=bearer(key)).status_code]
            codes += [
                client.post(DIGITS_URL, json=DIGITS, headers=bearer(key)).status_code
                for _ in range(3)
            ]
            assert codes == [200] * 5, (i, codes)
        seventh = make_key("minter-7", "analyst", "vision", tier="trial")
        resp = client.post(DIGITS_URL, json=DIGITS, headers=bearer(seventh))
        assert_429(resp)
        assert detail(stack, resp)["detail"] == "window trial_network_minute"
        assert '"trial_network_minute";r=0;' in resp.headers["ratelimit"]
        key_id = key.split(".")[0].removeprefix("eak_")
        rotated = json.loads(cli(stack, "keys", "rotate", key_id, "--json").stdout)["key"]
        assert_429(client.post(DIGITS_URL, json=DIGITS, headers=bearer(rotated)))
    with client_from(stack, f"{net(12)}.9") as elsewhere:
        assert elsewhere.post(DIGITS_URL, json=DIGITS, headers=bearer(rotated)).status_code == 200


def test_burst_window_then_retry_after_is_honoured_and_denials_are_free(
    stack: Stack, make_key: Keys
) -> None:
    """standard: 50 a second (burst) and 1000 a minute (sustained) per key."""
    key = make_key(f"burst-{secrets.token_hex(3)}", "analyst", "vision")
    with client_from(stack, f"{net(13)}.9") as client:
        started = time.monotonic()
        codes = [
            client.post(DIGITS_URL, json=DIGITS, headers=bearer(key)).status_code for _ in range(50)
        ]
        assert codes == [200] * 50
        assert time.monotonic() - started < 1.0, "too slow to test a 1 s burst window"
        denied = [client.post(DIGITS_URL, json=DIGITS, headers=bearer(key)) for _ in range(20)]
        retry = max(assert_429(r) for r in denied)
        assert retry <= 2
        time.sleep(retry)
        resp = client.post(DIGITS_URL, json=DIGITS, headers=bearer(key))
        assert resp.status_code == 200
        # the twenty 429s consumed nothing: 51 of the minute's 1000 used
        assert re.search(r'"minute";r=949;', resp.headers["ratelimit"]), resp.headers["ratelimit"]


# ------------------------------------------------------------------ quarantine


def test_quarantine_and_release(stack: Stack, gateway: httpx.Client, make_key: Keys) -> None:
    subject = f"prober-{secrets.token_hex(3)}"
    key = make_key(subject, "analyst", "vision")
    assert gateway.post(DIGITS_URL, json=DIGITS, headers=bearer(key)).status_code == 200
    cli(stack, "quarantine", "add", "--subject", subject, "--ttl", "10m", "--cause", "probing")
    resp = gateway.post(DIGITS_URL, json=DIGITS, headers=bearer(key))
    assert 590 <= assert_429(resp) <= 600
    assert detail(stack, resp)["reason"] == "quarantined"
    listing = cli(stack, "quarantine", "list").stdout
    assert re.search(rf"subject\s+{subject}\s+cli\s+\S+\s+probing", listing), listing
    cli(stack, "quarantine", "release", "--subject", subject)
    deadline = time.monotonic() + stack.settings.overlimit_cache_max_age + 2
    while gateway.post(DIGITS_URL, json=DIGITS, headers=bearer(key)).status_code != 200:
        assert time.monotonic() < deadline, "release did not reach the worker"
        time.sleep(0.2)
    assert subject not in cli(stack, "quarantine", "list").stdout


def test_credential_stuffing_quarantines_the_network(stack: Stack, make_key: Keys) -> None:
    """Failed authentications count per /24 (one Redis call on the 401 path only). Past the
    limit the whole network gets 429 — a valid key too, so the 429 reveals nothing."""
    valid = make_key(f"victim-{secrets.token_hex(3)}", "analyst", "vision")
    limit = stack.settings.auth_failure_limit
    with client_from(stack, f"{net(14)}.66") as attacker:
        codes = []
        for _ in range(limit + 1):
            forged = {"x-api-key": f"eak_{secrets.token_hex(6)}.{secrets.token_urlsafe(32)}"}
            codes.append(attacker.post(DIGITS_URL, json=DIGITS, headers=forged).status_code)
            if codes[-1] == 429:
                break
        assert codes[:limit] == [401] * limit and codes[-1] == 429, codes[-3:]
        resp = attacker.post(DIGITS_URL, json=DIGITS, headers=bearer(valid))
        assert assert_429(resp) > 60
        assert detail(stack, resp)["reason"] == "quarantined"
    with client_from(stack, f"{net(14)}.200") as neighbour:  # same /24
        assert_429(neighbour.post(DIGITS_URL, json=DIGITS, headers=bearer(valid)))
    with client_from(stack, f"{net(15)}.1") as elsewhere:
        assert elsewhere.post(DIGITS_URL, json=DIGITS, headers=bearer(valid)).status_code == 200
    listing = cli(stack, "quarantine", "list").stdout
    assert re.search(rf"prefix\s+{re.escape(net(14))}\.0/24\s+auto\s+\S+\s+auth_failures", listing)
    cli(stack, "quarantine", "release", "--prefix", f"{net(14)}.0")


# ------------------------------------------------------------------ adaptive throttling


def wait_for_metric(stack: Stack, name: str, value: float, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while metric(stack, name) != value:
        assert time.monotonic() < deadline, f"{name} never became {value}"
        time.sleep(0.1)


def test_threat_level_halves_the_limit_and_reverts_after_its_ttl(
    stack: Stack, make_key: Keys
) -> None:
    try:
        out = cli(stack, "throttle", "set", "--level", "elevated", "--ttl", "6s", "--reason", "t")
        assert "threat level elevated" in out.stdout
        wait_for_metric(stack, "extauthz_threat_level", 1.0)
        assert "threat level elevated" in cli(stack, "throttle", "show").stdout
        key = make_key(f"calm-{secrets.token_hex(3)}", "analyst", "vision", tier="trial")
        with client_from(stack, f"{net(16)}.9") as client:
            codes = [client.post(DIGITS_URL, json=DIGITS, headers=bearer(key)) for _ in range(3)]
            assert [r.status_code for r in codes] == [200, 200, 429]  # 5 x 0.5 = 2
            assert codes[0].headers["ratelimit-policy"].startswith('"minute";q=2;w=60')
            wait_for_metric(stack, "extauthz_threat_level", 0.0, timeout=10)  # TTL over
            again = make_key(f"calm-{secrets.token_hex(3)}", "analyst", "vision", tier="trial")
            codes = [
                client.post(DIGITS_URL, json=DIGITS, headers=bearer(again)).status_code
                for _ in range(6)
            ]
            assert codes == [200] * 5 + [429]
    finally:
        cli(stack, "throttle", "clear")


# ------------------------------------------------------------------ Redis outage


def test_redis_killed_mid_load_fails_closed_or_falls_back_within_the_bound(
    stack: Stack, make_key: Keys
) -> None:
    """digits is fail-closed: 503 once Redis is gone. iris is public and fail_mode open: each
    worker's in-process limiter stands in. Bound per key and minute: what Redis had counted
    before it died plus one limit per worker (here 1 worker: at most 5 + 5 for trial)."""
    closed = [make_key(f"closed-{i}", "analyst", "vision", tier="bench") for i in range(2)]
    opened = [make_key(f"open-{i}", "analyst", "vision", tier="trial") for i in range(2)]
    with client_from(stack, f"{net(17)}.9") as client:  # warm: key records cached
        for key in closed + opened:
            url, body = (IRIS_URL, IRIS) if key in opened else (DIGITS_URL, DIGITS)
            assert client.post(url, json=body, headers=bearer(key)).status_code == 200
    killed_at: list[float] = []

    def load(key: str, url: str, body: dict, until: float) -> list[tuple[float, int, float]]:
        out = []
        with client_from(stack, f"{net(17)}.{10 + secrets.randbelow(200)}") as c:
            while time.monotonic() < until:
                started = time.monotonic()
                code = c.post(url, json=body, headers=bearer(key)).status_code
                out.append((started, code, time.monotonic() - started))
                time.sleep(0.02)
        return out

    until = time.monotonic() + 4.0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = {pool.submit(load, k, DIGITS_URL, DIGITS, until): k for k in closed}
        futures |= {pool.submit(load, k, IRIS_URL, IRIS, until): k for k in opened}
        time.sleep(1.0)
        killed_at.append(time.monotonic())
        stack.stop("redis")
        results = {futures[f]: f.result() for f in futures}
    try:
        kill = killed_at[0]
        for key in closed:
            after = [code for t, code, _ in results[key] if t > kill + 0.2]
            assert after and set(after) == {503}, after
        for key in opened:
            codes = [code for _, code, _ in results[key]]
            assert set(codes) <= {200, 429}, codes
            # 1 warm-up + what Redis admitted before the kill + the fallback's 5, at most
            assert 1 + codes.count(200) <= 5 + 5, codes
            after = [code for t, code, _ in results[key] if t > kill + 0.2]
            assert after.count(200) <= 5 and after[-1] == 429, after
        slowest = max(d for r in results.values() for _, _, d in r)
        assert slowest < 1.0, f"a decision took {slowest:.2f} s"
    finally:
        stack.up(["redis"])


# ------------------------------------------------------------------ scale-out


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _sockets(port: int, state: str) -> set[str]:
    """Inodes of TCP sockets whose local end is `port`, in `state` (01 established, 0A
    listening)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def _served_connections(port: int) -> set[str]:
    return _sockets(port, "01")


def _listening(port: int) -> set[str]:
    return _sockets(port, "0A")


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@contextmanager
def with_workers(stack: Stack, n: int) -> Iterator[list[int]]:
    """The stack's extauthz replaced by `serve --workers n`; yields the worker pids."""
    stack.stop("extauthz")
    multi = Stack(stack.settings.model_copy(update={"workers": n}), redis_aof=False)
    try:
        multi.up(["extauthz"])
        supervisor = multi.pid("extauthz")
        assert supervisor is not None
        workers = _children(supervisor)
        listening = _listening(stack.settings.port)
        deadline = time.monotonic() + 30
        while not all(_socket_inodes(pid) & listening for pid in workers):
            assert time.monotonic() < deadline, "not every worker listens"
            time.sleep(0.1)
            workers, listening = _children(supervisor), _listening(stack.settings.port)
        yield workers
    finally:
        multi.stop("extauthz")
        stack.up(["extauthz"])


def test_two_workers_enforce_one_shared_limit(stack: Stack, make_key: Keys) -> None:
    key = make_key(f"scaled-{secrets.token_hex(3)}", "analyst", "vision", tier="trial")
    via_envoy = make_key(f"scaled-{secrets.token_hex(3)}", "analyst", "vision", tier="trial")
    port = stack.settings.port
    with with_workers(stack, 2) as workers:
        assert len(workers) == 2
        # 16 separate gRPC connections: the kernel spreads them over both workers
        channels = [
            grpc.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(16)
        ]
        try:
            request = check_request(
                headers={"authorization": f"Bearer {key}"},
                body=json.dumps(DIGITS).encode(),
                source_ip=f"{net(18)}.9",
            )
            allowed = 0
            for channel in channels:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                allowed += stub.Check(request, timeout=5).status.code == 0
            served = _served_connections(port)
            per_worker = [len(_socket_inodes(pid) & served) for pid in workers]
            assert all(n > 0 for n in per_worker), per_worker  # both workers decided
            assert allowed == 5, allowed  # trial: 5 a minute, whichever worker asks Redis
        finally:
            for channel in channels:
                channel.close()
        with client_from(stack, f"{net(19)}.9") as client:
            codes = [
                client.post(DIGITS_URL, json=DIGITS, headers=bearer(via_envoy)).status_code
                for _ in range(8)
            ]
        assert codes == [200] * 5 + [429] * 3
        # the supervisor serves every worker's metrics, summed
        assert metric(stack, "extauthz_decisions_total", '{reason="ok",status="200"}') >= 10
