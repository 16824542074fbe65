"""The Envoy config generator (extauthz/edge/), pure parts: catalog, routes, clusters, files.
That Envoy accepts what it writes, and behaves so, is tests/e2e/test_edge.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from extauthz.edge import clusters, listeners, proto, render, routes
from extauthz.edge.catalog import CatalogError, Model, Version, load_catalog, parse_catalog
from extauthz.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
S = Settings(model_port=18080, port=19191, envoy_route_timeout=15.0)
DIGITS_V = Model("digits", None, (Version("v1", 90), Version("v2", 10, "canary-pool")))


def routes_of(models: tuple[Model, ...]) -> list[dict]:
    config = proto.to_dict(routes.route_configuration(S, models))
    return config["virtual_hosts"][0]["routes"]


def test_the_catalog_the_policy_reads_is_the_catalog_the_gateway_routes() -> None:
    models = load_catalog(ROOT / "rego")
    names = {m.name for m in models}
    assert names == set(json.loads((ROOT / "rego/extauthz/catalog/data.json").read_text()))
    echo = next(m for m in models if m.name == "echo")
    assert echo.timeout_s == 5.0  # its catalog entry's edge.timeout_s


@pytest.mark.parametrize(
    "doc",
    [
        {"../etc": {}},
        {"digits": {"versions": {"v 1": {}}}},
        {"digits": {"versions": {"v1": {"weight": 101}}}},
        {"digits": {"versions": {"v1": {"weight": "50"}}}},
        {"digits": {"versions": {"v1": {"upstream": "a/b"}}}},
        {"digits": {"edge": {"timeout_s": 0}}},
        {"digits": {"edge": {"timeout_s": "5s"}}},
    ],
)
def test_a_catalog_the_routes_could_not_carry_safely_is_refused(doc: dict) -> None:
    with pytest.raises(CatalogError):
        parse_catalog(doc)


def test_every_model_has_its_own_route_with_its_own_timeout_before_the_default() -> None:
    found = routes_of((Model("digits"), Model("echo", 5.0)))
    names = [r["name"] for r in found]
    assert names == [
        "model/digits/shaped",
        "model/digits",
        "model/echo/shaped",
        "model/echo",
        "default/shaped",
        "default",
    ]
    by_name = {r["name"]: r for r in found}
    assert by_name["model/digits"]["match"] == {"path_separated_prefix": "/v2/models/digits"}
    assert by_name["model/digits"]["route"] == {"cluster": "model_server", "timeout": "15s"}
    assert by_name["model/echo"]["route"]["timeout"] == "5s"
    assert by_name["default"]["match"] == {"prefix": "/"}
    # only the shaped variant runs ext_proc, and only with ext_authz's plan in its metadata
    shaped = by_name["model/digits/shaped"]
    assert shaped["match"]["dynamic_metadata"][0]["path"] == [{"key": "shape"}]
    assert shaped["request_headers_to_remove"] == ["accept-encoding"]
    ext_proc = "envoy.filters.http.ext_proc"
    assert (
        shaped["typed_per_filter_config"][ext_proc]["overrides"]["processing_mode"][
            "response_body_mode"
        ]
        == "BUFFERED"
    )
    assert by_name["model/digits"]["typed_per_filter_config"][ext_proc]["disabled"] is True


def test_a_versioned_model_routes_by_the_header_extauthz_sets_and_nothing_else() -> None:
    found = [r for r in routes_of((DIGITS_V,)) if r["name"].startswith("model/")]
    assert [r["name"] for r in found] == [
        "model/digits/v1/shaped",
        "model/digits/v1",
        "model/digits/v2/shaped",
        "model/digits/v2",
        "model/digits/no-version",
    ]
    v1, v2, none = found[1], found[3], found[4]
    assert v1["match"]["headers"] == [
        {"name": routes.VERSION_HEADER, "string_match": {"exact": "v1"}}
    ]
    assert v1["route"]["cluster"] == "model-digits-v1"
    assert v2["route"]["cluster"] == "canary-pool"  # its `upstream`
    # without a valid header: a generic 404, never the unversioned model
    assert none["match"] == {"path_separated_prefix": "/v2/models/digits"}
    assert none["direct_response"]["status"] == 404
    rewrite = v2["route"]["regex_rewrite"]
    pattern = re.compile(rewrite["pattern"]["regex"])
    substitution = rewrite["substitution"].replace("\\2", r"\2")
    for path, expected in [
        ("/v2/models/digits/infer", "/v2/models/digits/versions/v2/infer"),
        ("/v2/models/digits/versions/v1/infer", "/v2/models/digits/versions/v2/infer"),
        ("/v2/models/digits/ready", "/v2/models/digits/versions/v2/ready"),
        ("/v2/models/digits", "/v2/models/digits/versions/v2"),
    ]:
        assert pattern.sub(substitution, path) == expected, path


def test_model_clusters_one_per_version_without_upstream_with_breakers_and_outlier_detection() -> (
    None
):
    found = [proto.to_dict(c) for c in clusters.model_clusters(S, (Model("echo"), DIGITS_V))]
    assert [c["name"] for c in found] == ["model_server", "model-digits-v1"]
    server = found[0]
    endpoint = server["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"]["port_value"] == 18080
    assert server["circuit_breakers"]["thresholds"][0]["max_requests"] == 1024
    # the .proto's field name; betterproto2's own casings would write consecutive_5_xx
    assert server["outlier_detection"]["consecutive_5xx"] == 5


def test_write_dynamic_keeps_clusters_routes_left_until_pruned(tmp_path: Path) -> None:
    xds = tmp_path / "xds"
    render.write_dynamic(S, (DIGITS_V,), xds)
    files = listeners.Files(Path(), Path(), Path(), Path(), xds_dir=xds)

    def clusters() -> list[str]:
        return [r["name"] for r in json.loads(files.cds_file.read_text())["resources"]]

    assert clusters() == ["model_server", "model-digits-v1"]
    first = json.loads(files.rds_file.read_text())
    render.write_dynamic(S, (Model("digits"),), xds)  # v1 gone from the routes...
    assert clusters() == ["model_server", "model-digits-v1"]  # ...not yet from the clusters
    second = json.loads(files.rds_file.read_text())
    assert second["version_info"] != first["version_info"]
    assert second["resources"][0]["@type"].endswith("route.v3.RouteConfiguration")
    render.write_dynamic(S, (Model("digits"),), xds, prune=True)
    assert clusters() == ["model_server"]
    leftovers = [p.name for p in xds.rglob("*") if p.is_file() and p.suffix != ".json"]
    assert not leftovers, leftovers


def test_a_rotated_certificate_replaces_the_previous_but_one(tmp_path: Path) -> None:
    secret = tmp_path / "sds" / "secret.json"
    files = [render.write_tls_secret(secret, f"cert {i}".encode(), b"key") for i in range(3)]
    doc = json.loads(secret.read_text())["resources"][0]
    assert doc["name"] == listeners.TLS_SECRET
    assert doc["tls_certificate"]["certificate_chain"]["filename"] == str(files[2])
    left = sorted(p.name for p in secret.parent.glob("server-*.pem"))
    assert left == sorted([files[1].name, files[2].name])  # the previous pair may be loading
    key = Path(doc["tls_certificate"]["private_key"]["filename"])
    assert key.stat().st_mode & 0o777 == 0o600


def test_the_bench_listeners_share_the_gateway_connection_manager(tmp_path: Path) -> None:
    from bench.envoy_bench import bench_config

    config = bench_config(
        listeners={"A": 1, "C": 2},
        sink_port=3,
        admin_port=4,
        model_port=5,
        extauthz_port=6,
        trivial_port=7,
        peer_port=None,
        ratelimit_port=None,
        max_body_bytes=S.max_body_bytes,
        access_log_dir=tmp_path,
    )
    gateway = proto.to_dict(
        listeners.connection_manager(
            "x", [], tmp_path / "log", route_config=routes.route_configuration(S, ())
        )
    )["typed_config"]
    differ = {"stat_prefix", "http_filters", "route_config", "access_log"}
    for listener in config["static_resources"]["listeners"][1:]:
        manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
        assert {k: v for k, v in manager.items() if k not in differ} == {
            k: v for k, v in gateway.items() if k not in differ
        }
