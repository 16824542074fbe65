"""The generated Envoy configuration (extauthz/edge/) through the real Envoy: it validates, and a
running Envoy picks up rewritten routes and clusters without a restart or a dropped request."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from bench.envoy_bench import bench_config
from extauthz.dev.certs import DevCA
from extauthz.dev.devstack import Stack, find_envoy
from extauthz.dev.issuer import DevIssuer, make_proof, new_device_key
from extauthz.dev.runner import free_ports
from extauthz.edge import build, listeners, render, routes
from extauthz.edge.catalog import catalog_file, load_catalog, parse_catalog
from extauthz.settings import Settings
from tests.e2e.conftest import Keys, cli
from tests.e2e.payloads import DIGITS, ECHO

ROOT = Path(__file__).resolve().parents[2]
DIGITS_URL = "/v2/models/digits/infer"


def validate(config: Path) -> None:
    out = subprocess.run(
        [find_envoy(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


@pytest.fixture(scope="module")
def dev_files(tmp_path_factory: pytest.TempPathFactory) -> listeners.Files:
    directory = tmp_path_factory.mktemp("edge")
    ca = DevCA(directory / "dev-ca")
    ca.ensure()
    return listeners.Files(
        access_log=directory / "access.log",
        server_cert=ca.server_cert,
        server_key=ca.server_key,
        client_ca=ca.ca_file,
    )


def test_the_dev_config_validates_with_every_route_and_cluster_inline(
    dev_files: listeners.Files, tmp_path: Path
) -> None:
    s = Settings()
    path = render.write_static(
        s,
        tmp_path / "static.json",
        dev_files,
        build.gateway_ports(s, 10099),
        load_catalog(ROOT / "rego"),
    )
    validate(path)
    listeners = json.loads(path.read_text())["static_resources"]["listeners"]
    assert [x["name"] for x in listeners] == [
        "inference",
        "inference_tls",
        "inference_mtls",
        "floor",
    ]


def test_versioned_routes_validate(dev_files: listeners.Files, tmp_path: Path) -> None:
    """A model with versions: header matches, path rewrites, per-version clusters, the 404."""
    s = Settings()
    doc = json.loads(catalog_file(ROOT / "rego").read_text())
    doc["digits"]["versions"] = {"v1": {"weight": 90}, "v2": {"weight": 10}}
    doc["iris"]["versions"] = {"v1": {"weight": 100, "upstream": "model_server"}}
    models = parse_catalog(doc)
    path = render.write_static(s, tmp_path / "v.json", dev_files, build.gateway_ports(s), models)
    validate(path)
    clusters = json.loads(path.read_text())["static_resources"]["clusters"]
    assert {"model-digits-v1", "model-digits-v2"} <= {c["name"] for c in clusters}


def test_the_running_config_validates_with_tls_from_sds(
    dev_files: listeners.Files, tmp_path: Path
) -> None:
    s = Settings()
    models = load_catalog(ROOT / "rego")
    path = render.write_gateway(s, tmp_path / "envoy", dev_files, build.gateway_ports(s), models)
    validate(path)
    # what Envoy loads from files later is the same builder's output: validate it inline too
    validate(
        render.write_static(s, tmp_path / "static.json", dev_files, build.gateway_ports(s), models)
    )


def test_the_bench_config_validates(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path / "issuer", "iss", "aud")
    issuer.ensure()
    config = bench_config(
        listeners={"A": 20001, "B": 20002, "C": 20003, "D": 20004, "E": 20005},
        sink_port=20006,
        admin_port=20007,
        model_port=20008,
        extauthz_port=20009,
        trivial_port=20010,
        peer_port=20011,
        ratelimit_port=20012,
        max_body_bytes=65536,
        access_log_dir=tmp_path,
        native_jwt=(issuer.jwks_file, "iss", "aud"),
    )
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(config))
    validate(path)


# ---- a running Envoy


def admin(stack: Stack, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{stack.settings.envoy_admin_port}{path}", timeout=5)


def stat(stack: Stack, name: str) -> int:
    for line in admin(stack, "/stats").text.splitlines():
        key, _, value = line.partition(": ")
        if key == name:
            return int(value)
    raise AssertionError(f"no stat {name}")


def dumped_routes(stack: Stack) -> list[str]:
    dump = admin(stack, "/config_dump?resource=dynamic_route_configs").json()
    routes = []
    for config in dump["configs"]:
        for vhost in config["route_config"]["virtual_hosts"]:
            routes += [r["name"] for r in vhost["routes"]]
    return routes


def dumped_clusters(stack: Stack) -> set[str]:
    dump = admin(stack, "/config_dump?resource=dynamic_active_clusters").json()
    return {c["cluster"]["name"] for c in dump["configs"]}


def wait_until(check, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.fixture
def versioned_digits(stack: Stack) -> Iterator[dict]:
    """digits with versions in the stack's catalog (the policy's data too), restored after."""
    path = catalog_file(stack.policy_dir)
    original = path.read_text()
    doc = json.loads(original)
    doc["digits"]["versions"] = {"v1": {"weight": 100}}
    path.write_text(json.dumps(doc))
    try:
        yield doc
    finally:
        path.write_text(original)
        stack.update_routes(prune=True)


def test_rewritten_routes_and_clusters_are_picked_up_without_a_restart(
    stack: Stack, gateway: httpx.Client, make_key: Keys, versioned_digits: dict
) -> None:
    key = make_key("edge-rollout", "analyst", "vision")
    headers = {"authorization": f"Bearer {key}"}
    assert gateway.post(DIGITS_URL, json=DIGITS, headers=headers).status_code == 200
    pid = stack.pid("envoy")
    cds, rds = (
        stat(stack, "cluster_manager.cds.update_success"),
        stat(stack, "http.inference.rds.inference.update_success"),
    )
    stack.update_routes()
    wait_until(lambda: "model/digits/v1" in dumped_routes(stack))
    assert "model-digits-v1" in dumped_clusters(stack)
    assert stat(stack, "cluster_manager.cds.update_success") > cds
    assert stat(stack, "http.inference.rds.inference.update_success") > rds
    # extauthz picks the version (the policy's data says v1) and sets the header Envoy routes
    # on; a client's own x-extauthz-model-version is overwritten before routing
    for extra in ({}, {routes.VERSION_HEADER: "v9"}):
        resp = gateway.post(DIGITS_URL, json=DIGITS, headers={**headers, **extra})
        assert resp.status_code == 200 and resp.json()["model_version"] == "v1", resp.text
    # a version Envoy has no route for (only v9 routed, the policy still says v1): a generic 404
    only_v9 = {**versioned_digits["digits"], "versions": {"v9": {"weight": 100}}}
    stack.update_routes(parse_catalog({**versioned_digits, "digits": only_v9}))
    wait_until(lambda: "model/digits/v9" in dumped_routes(stack))
    resp = gateway.post(DIGITS_URL, json=DIGITS, headers=headers)
    assert resp.status_code == 404 and resp.json() == {"error": "not_found"}, resp.text
    # back to one route: the version's cluster stays until pruned
    del versioned_digits["digits"]["versions"]
    catalog_file(stack.policy_dir).write_text(json.dumps(versioned_digits))
    stack.update_routes()
    wait_until(lambda: "model/digits/v1" not in dumped_routes(stack))
    assert "model-digits-v1" in dumped_clusters(stack)
    assert gateway.post(DIGITS_URL, json=DIGITS, headers=headers).status_code == 200
    stack.update_routes(prune=True)
    wait_until(lambda: "model-digits-v1" not in dumped_clusters(stack))
    assert stack.pid("envoy") == pid  # the same Envoy all along


def test_route_rewrites_under_load_drop_no_request(stack: Stack, make_key: Keys) -> None:
    """Requests in flight while the routes and clusters are rewritten ten times: all answered."""
    key = make_key("edge-load", "analyst", "vision", tier="bench")
    headers = {"authorization": f"Bearer {key}"}
    models = stack.catalog()
    statuses: list[int] = []
    warm: list[int] = []
    measuring, stop = threading.Event(), threading.Event()

    def client() -> None:
        with httpx.Client(base_url=stack.envoy_url, timeout=10) as c:
            while not stop.is_set():
                out = statuses if measuring.is_set() else warm
                try:
                    out.append(c.post(DIGITS_URL, json=DIGITS, headers=headers).status_code)
                except httpx.HTTPError:
                    out.append(-1)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    # warm up first, under the same concurrency: a suite that restarted Redis before (test_degraded)
    # leaves the service stale pooled connections whose first use fails (a 503, not the routes)
    try:
        wait_until(lambda: warm[-20:].count(200) == 20, timeout=20)
        measuring.set()
        for i in range(10):
            timeout = 15.0 + i  # a real change each time (a new route version)
            changed = tuple(
                m if m.name != "digits" else type(m)(m.name, timeout, m.versions) for m in models
            )
            stack.update_routes(changed)
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join()
        stack.update_routes(prune=True)
    assert len(statuses) > 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


# ---- the TLS listener (every client)


def tls_context(stack: Stack) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(stack.dev_ca.ca_file))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def handshake(stack: Stack, ctx: ssl.SSLContext) -> tuple[str, str | None, int]:
    """(TLS version, ALPN protocol, certificate serial) of one new connection."""
    port = stack.settings.envoy_tls_port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        with ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            serial = x509.load_der_x509_certificate(der).serial_number
            return str(tls.version()), tls.selected_alpn_protocol(), serial


def test_the_tls_listener_serves_the_dev_ca_certificate_tls13_and_h2(
    stack: Stack, make_key: Keys
) -> None:
    version, alpn, _ = handshake(stack, tls_context(stack))
    assert (version, alpn) == ("TLSv1.3", "h2")  # 1.3 preferred, h2 by ALPN
    http1 = tls_context(stack)
    http1.set_alpn_protocols(["http/1.1"])
    assert handshake(stack, http1)[1] == "http/1.1"
    key = make_key("edge-tls", "analyst", "vision")
    with httpx.Client(
        base_url=stack.envoy_tls_url, verify=tls_context(stack), http2=True, timeout=10
    ) as client:
        resp = client.post(DIGITS_URL, json=DIGITS, headers={"authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    assert resp.http_version == "HTTP/2"
    assert resp.json()["outputs"][0]["data"] == [0]
    # without credentials, TLS changes nothing: the same generic 401
    with httpx.Client(base_url=stack.envoy_tls_url, verify=tls_context(stack)) as client:
        resp = client.post(DIGITS_URL, json=DIGITS)
    assert resp.status_code == 401 and resp.json() == {"error": "unauthenticated"}


def test_the_tls_listener_refuses_tls_1_1_and_accepts_1_2_with_modern_ciphers(
    stack: Stack,
) -> None:
    def client(version: ssl.TLSVersion, ciphers: str = "") -> ssl.SSLContext:
        ctx = tls_context(stack)
        # the client would refuse TLS 1.1 itself at OpenSSL's default security level: lower
        # it, so a refusal can only come from Envoy
        ctx.set_ciphers(ciphers or "ALL:@SECLEVEL=0")
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
        return ctx

    with pytest.raises(ssl.SSLError) as refused:
        handshake(stack, client(ssl.TLSVersion.TLSv1_1))
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value).upper(), refused.value  # Envoy's alert
    assert handshake(stack, client(ssl.TLSVersion.TLSv1_2))[0] == "TLSv1.2"
    # a TLS 1.2 client offering only CBC suites (no AEAD) is refused
    with pytest.raises(ssl.SSLError) as weak:
        handshake(stack, client(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA:@SECLEVEL=0"))
    assert "HANDSHAKE_FAILURE" in str(weak.value).upper(), weak.value


def test_a_rotated_certificate_is_served_without_a_restart(stack: Stack) -> None:
    pid = stack.pid("envoy")
    before = handshake(stack, tls_context(stack))[2]
    serial = stack.rotate_certificate()
    assert serial != before
    wait_until(lambda: handshake(stack, tls_context(stack))[2] == serial)
    assert stack.pid("envoy") == pid


# ---- hardening (README, "The edge": each value and why)


def test_too_many_headers_get_the_generic_431(gateway: httpx.Client, make_key: Keys) -> None:
    key = make_key("edge-headers", "analyst", "vision")
    headers = {"authorization": f"Bearer {key}"}
    assert gateway.post(DIGITS_URL, json=DIGITS, headers=headers).status_code == 200
    many = {**headers, **{f"x-filler-{i}": "1" for i in range(100)}}
    resp = gateway.post(DIGITS_URL, json=DIGITS, headers=many)
    assert resp.status_code == 431 and resp.json() == {"error": "headers_too_large"}


def test_limits_and_breakers_are_what_envoy_runs_with(stack: Stack) -> None:
    s = stack.settings
    dump = admin(stack, "/config_dump").json()["configs"]
    boot = next(c for c in dump if c["@type"].endswith("BootstrapConfigDump"))["bootstrap"]
    monitors = {m["name"]: m["typed_config"] for m in boot["overload_manager"]["resource_monitors"]}
    heap = monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"]
    assert int(heap) == s.envoy_max_heap_bytes
    connections = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert int(connections["max_active_downstream_connections"]) == s.envoy_max_connections
    actions = {a["name"] for a in boot["overload_manager"]["actions"]}
    assert actions == {
        "envoy.overload_actions.shrink_heap",
        "envoy.overload_actions.stop_accepting_requests",
    }
    clusters = {
        c["cluster"]["name"]: c["cluster"]
        for c in admin(stack, "/config_dump?resource=dynamic_active_clusters").json()["configs"]
    }
    server = clusters["model_server"]
    assert server["circuit_breakers"]["thresholds"][0]["max_requests"] == s.envoy_model_max_requests
    assert server["outlier_detection"]["consecutive_5xx"] == 5
    assert server["per_connection_buffer_limit_bytes"] == 32768
    # Envoy's own view of the breaker (remaining requests before it opens)
    assert stat(stack, "cluster.model_server.circuit_breakers.default.rq_open") == 0
    for listener in boot["static_resources"]["listeners"]:
        if listener["name"] == "floor":
            continue
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert manager["http2_protocol_options"]["max_concurrent_streams"] == 100
        assert manager["common_http_protocol_options"]["max_headers_count"] == 100
        assert manager["request_headers_timeout"] == "10s"
        assert manager["use_remote_address"] is True
    # a model's own route timeout (its catalog entry's edge.timeout_s)
    routes = admin(stack, "/config_dump?resource=dynamic_route_configs").json()["configs"]
    by_name = {r["name"]: r for r in routes[0]["route_config"]["virtual_hosts"][0]["routes"]}
    assert by_name["model/echo"]["route"]["timeout"] == "5s"
    default = f"{s.envoy_route_timeout:g}s"
    assert by_name["model/iris"]["route"]["timeout"] == default
    assert by_name["model/digits/v1"]["route"]["timeout"] == default  # digits has versions


@pytest.fixture(scope="module")
def small_gateway(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second Envoy (same extauthz, OPA, Redis, model server) allowed 3 connections in all and
    1 s for a request's headers."""
    envoy, admin_port, mtls, tls = free_ports(4)
    settings = stack.settings.model_copy(
        update={
            "run_dir": tmp_path_factory.mktemp("small"),
            "envoy_port": envoy,
            "envoy_admin_port": admin_port,
            "envoy_mtls_port": mtls,
            "envoy_tls_port": tls,
            "envoy_max_connections": 3,
            "envoy_request_headers_timeout": 1.0,
        }
    )
    second = Stack(settings, redis_aof=False)
    second.up(["envoy"])
    try:
        yield second
    finally:
        second.down(["envoy"])


def test_past_the_global_connection_limit_new_connections_are_closed(small_gateway: Stack) -> None:
    request = b"GET /v2/health/ready HTTP/1.1\r\nhost: x\r\n\r\n"

    def answered(sock: socket.socket) -> bool:
        try:
            sock.sendall(request)
            return sock.recv(64).startswith(b"HTTP/1.1 ")
        except OSError:  # reset
            return False

    port = small_gateway.settings.envoy_port
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    try:
        assert all(answered(sock) for sock in held)  # (a generic 401: no credentials)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as fourth:
            assert not answered(fourth)
        overflow = [
            int(value)
            for key, _, value in (
                line.partition(": ") for line in admin(small_gateway, "/stats").text.splitlines()
            )
            if key.endswith("downstream_global_cx_overflow")
        ]
        assert sum(overflow) >= 1
    finally:
        held.pop().close()

    # one released: a new connection is served again
    def fresh() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return answered(sock)

    wait_until(fresh)
    for sock in held:
        sock.close()


def test_a_dpop_bound_token_works_over_tls_and_h2(stack: Stack) -> None:
    """The TLS listener's origin is one of the stack's DPoP origins; the model server behind it
    sees no credential and the request's scheme as https."""
    issuer = stack.dev_issuer
    issuer.ensure()
    device = new_device_key()
    token = issuer.mint("olga", ("operator",), ("ops",), dpop_jkt=device.thumbprint())
    path = "/v2/models/echo/infer"
    proof = make_proof(device, "POST", stack.envoy_tls_url + path, token)
    with httpx.Client(
        base_url=stack.envoy_tls_url, verify=tls_context(stack), http2=True, timeout=10
    ) as client:
        resp = client.post(
            path, json=ECHO, headers={"authorization": f"DPoP {token}", "dpop": proof}
        )
    assert resp.status_code == 200, resp.text
    assert resp.http_version == "HTTP/2"
    seen = {k.lower(): v for k, v in json.loads(resp.json()["outputs"][0]["data"][0]).items()}
    assert seen["x-extauthz-subject"] == "olga"
    assert seen["x-forwarded-proto"] == "https"
    assert "authorization" not in seen and "dpop" not in seen


def test_a_client_slow_to_send_its_headers_gets_408_and_is_disconnected(
    small_gateway: Stack,
) -> None:
    port = small_gateway.settings.envoy_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nhost: x\r\n")  # and no more
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
    assert 0.8 < waited < 8, waited  # the 1 s limit (not the default 10 s), then closed


def test_envoy_render_prints_what_the_stack_runs_and_validates_it(stack: Stack) -> None:
    before = {p: p.read_bytes() for p in stack.envoy_dir.rglob("*.json")}
    out = cli(stack, "envoy", "render").stdout
    assert f"# {stack.envoy_config}" in out
    running = json.loads(stack.envoy_config.read_text())
    printed = out.split(f"# {stack.envoy_config}\n", 1)[1].split("\n# ", 1)[0]
    mine, theirs = json.loads(printed)["static_resources"], running["static_resources"]
    assert mine["clusters"] == theirs["clusters"]
    # the same but for the tests' benchmark floor listener (not a setting)
    assert mine["listeners"] == [x for x in theirs["listeners"] if x["name"] != "floor"]
    assert {p: p.read_bytes() for p in stack.envoy_dir.rglob("*.json")} == before  # untouched
    assert "OK" in cli(stack, "envoy", "render", "--validate").stdout
