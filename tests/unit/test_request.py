import pytest

from extauthz.request import Forwarding, client_address, parse_check_request, parse_route
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


# ---- one client address for every stage (finding 9 of issue 11)

XFF = "198.51.100.9, 203.0.113.5, 10.0.0.2"  # client claim, what the proxy saw, Envoy's peer


@pytest.mark.parametrize(
    ("peer", "xff", "hops", "client"),
    [
        ("10.0.0.2", XFF, 0, "10.0.0.2"),  # no trusted proxy: never the header
        ("10.0.0.2", XFF, 1, "203.0.113.5"),  # the entry the one trusted proxy wrote
        ("10.0.0.2", XFF, 2, "198.51.100.9"),
        ("10.0.0.2", XFF, 5, "10.0.0.2"),  # too short: not through the proxies, the peer
        ("10.0.0.2", "", 1, "10.0.0.2"),
        ("10.0.0.2", "10.0.0.2", 1, "10.0.0.2"),  # only Envoy's own entry: came directly
        ("10.0.0.2", "not-an-ip, 10.0.0.2", 1, ""),  # garbage from the proxy: unknown
        ("10.0.0.2", " 203.0.113.5:4711 ,10.0.0.2", 1, "203.0.113.5"),
        ("10.0.0.2", "[2001:db8::1]:443, 10.0.0.2", 1, "2001:db8::1"),
        ("10.0.0.2", "::ffff:203.0.113.5, 10.0.0.2", 1, "203.0.113.5"),
        ("::ffff:10.0.0.2", "", 0, "10.0.0.2"),  # a dual-stack listener's peer, as IPv4
        ("", "", 0, ""),
    ],
)
def test_client_address(peer: str, xff: str, hops: int, client: str) -> None:
    assert client_address(peer, xff, Forwarding(hops)) == client


def test_a_spoofed_forwarded_for_is_ignored() -> None:
    """A client claims X-Forwarded-For: 10.20.0.5 (a range the policy and a key trust). Straight
    to Envoy (no trusted proxy: trusted_hops 0) the claim is ignored; through one trusted proxy
    only the entry that proxy wrote counts, never what the client wrote left of it."""
    direct = check_request(
        headers={"x-forwarded-for": "10.20.0.5,198.51.100.7"}, source_ip="198.51.100.7"
    )
    view = parse_check_request(direct, 1024)
    assert (view.source_ip, view.peer_ip) == ("198.51.100.7", "198.51.100.7")
    proxied = check_request(
        headers={"x-forwarded-for": "10.20.0.5, 198.51.100.7, 10.0.0.2"}, source_ip="10.0.0.2"
    )
    view = parse_check_request(proxied, 1024, Forwarding(1))
    assert (view.source_ip, view.peer_ip) == ("198.51.100.7", "10.0.0.2")


PROXIES = Forwarding.parse(2, "10.0.0.0/8, 2001:db8:1::/48")


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        # through both proxies: the entry the outer one wrote
        ("10.0.0.2", "10.20.0.5, 203.0.113.5, 10.0.0.3, 10.0.0.2", "203.0.113.5"),
        # a client that skipped the outer proxy: what the inner one saw, not the client's claim
        ("10.0.0.2", "10.20.0.5, 203.0.113.5, 10.0.0.2", "203.0.113.5"),
        # a peer that is no proxy names only itself, whatever it writes
        ("198.51.100.7", "10.20.0.5, 10.0.0.3, 198.51.100.7", "198.51.100.7"),
        ("2001:db8:1::9", "203.0.113.5, 2001:db8:1::9", "203.0.113.5"),
        ("10.0.0.2", "10.0.0.2", "10.0.0.2"),  # a proxy that forwarded nobody
        ("10.0.0.2", "junk, 10.0.0.2", ""),
    ],
)
def test_trusted_proxy_ranges_are_walked_hop_by_hop(peer: str, xff: str, client: str) -> None:
    assert client_address(peer, xff, PROXIES) == client


def test_proxy_ranges_parse_strictly() -> None:
    assert Forwarding.parse(1, "").proxies == ()
    assert [str(n) for n in Forwarding.parse(1, "10.1.2.3/8,::1").proxies] == [
        "10.0.0.0/8",
        "::1/128",
    ]
    with pytest.raises(ValueError):
        Forwarding.parse(1, "10.0.0.0/33")
    with pytest.raises(ValueError):
        Forwarding.parse(1, "proxy.internal")
