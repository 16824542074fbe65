"""The generated Envoy configuration (extauthz/edge/) through the real Envoy: it validates, and a
running Envoy picks up rewritten routes and clusters without a restart or a dropped request."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.envoy_bench import bench_config
from extauthz.dev.certs import DevCA
from extauthz.dev.devstack import Stack, find_envoy
from extauthz.dev.issuer import DevIssuer
from extauthz.edge import build, render
from extauthz.edge.catalog import catalog_file, load_catalog, parse_catalog
from extauthz.settings import Settings
from tests.e2e.conftest import Keys
from tests.e2e.payloads import DIGITS

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
def dev_files(tmp_path_factory: pytest.TempPathFactory) -> build.Files:
    directory = tmp_path_factory.mktemp("edge")
    ca = DevCA(directory / "dev-ca")
    ca.ensure()
    return build.Files(
        access_log=directory / "access.log",
        server_cert=ca.server_cert,
        server_key=ca.server_key,
        client_ca=ca.ca_file,
    )


def test_the_dev_config_validates_with_every_route_and_cluster_inline(
    dev_files: build.Files, tmp_path: Path
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


def test_the_running_config_validates_with_tls_from_sds(
    dev_files: build.Files, tmp_path: Path
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
    for extra in ({}, {build.VERSION_HEADER: "v9"}):
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
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=stack.envoy_url, timeout=10) as c:
            while not stop.is_set():
                try:
                    statuses.append(c.post(DIGITS_URL, json=DIGITS, headers=headers).status_code)
                except httpx.HTTPError:
                    statuses.append(-1)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
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
