import pytest

from extauthz.request import parse_check_request, parse_route
from extauthz.types import ModelRoute
from tests.unit.checkrequests import check_request


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/v2/models/digits/infer", ModelRoute("digits", "", "infer")),
        ("POST", "/v2/models/digits/versions/3/infer", ModelRoute("digits", "3", "infer")),
        ("GET", "/v2/models/digits", ModelRoute("digits", "", "metadata")),
        ("GET", "/v2/models/digits/versions/v1", ModelRoute("digits", "v1", "metadata")),
        ("GET", "/v2/models/digits/ready", ModelRoute("digits", "", "ready")),
        ("GET", "/v2/models/digits/infer", ModelRoute()),  # wrong method for the verb
        ("POST", "/v2/models/digits", ModelRoute()),
        ("POST", "/v2/models/digits/explain", ModelRoute()),
        ("GET", "/v2/health/ready", ModelRoute()),
        ("POST", "/v2/models/../infer", ModelRoute()),
        ("POST", "/v2/models/a%2Fb/infer", ModelRoute()),
        ("GET", "/", ModelRoute()),
    ],
)
def test_parse_route(method: str, path: str, route: ModelRoute) -> None:
    assert parse_route(method, path) == route


def test_parse_check_request_reads_what_the_decision_uses() -> None:
    req = check_request(
        method="post",
        path="/v2/models/cancer/infer?debug=1",
        headers={"x-api-key": "k", "content-type": "application/json"},
        body=b'{"inputs": []}',
        source_ip="10.1.2.3",
        request_id="abc",
    )
    view = parse_check_request(req, max_body_bytes=1024)
    assert view.method == "POST"
    assert view.path == "/v2/models/cancer/infer"
    assert view.route == ModelRoute("cancer", "", "infer")
    assert view.headers["x-api-key"] == "k"
    assert view.source_ip == "10.1.2.3"
    assert view.request_id == "abc"
    assert view.body == b'{"inputs": []}'


def test_body_is_bounded() -> None:
    view = parse_check_request(check_request(body=b"x" * 100), max_body_bytes=10)
    assert view.body == b"x" * 10


def test_empty_request_parses_to_no_route() -> None:
    from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

    view = parse_check_request(CheckRequest(), max_body_bytes=10)
    assert view.route == ModelRoute()
    assert view.headers == {}
