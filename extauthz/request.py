"""CheckRequest → RequestView: the one place that reads Envoy's request attributes."""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import unquote

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

from extauthz.types import ModelRoute, RequestView

# V2 Open Inference Protocol model routes: /v2/models/{name}[/versions/{v}][/infer|/ready]
_MODEL_PATH = re.compile(
    r"^/v2/models/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)"
    r"(?:/versions/(?P<version>[A-Za-z0-9][A-Za-z0-9._-]*))?"
    r"(?:/(?P<verb>infer|ready))?/?$"
)
_ACTIONS = {("infer", "POST"): "infer", ("ready", "GET"): "ready", (None, "GET"): "metadata"}
_NO_ROUTE = ModelRoute()


def parse_route(method: str, path: str) -> ModelRoute:
    """The model, version and action a request addresses; an empty route if none."""
    match = _MODEL_PATH.match(path)
    if match is None:
        return _NO_ROUTE
    action = _ACTIONS.get((match["verb"], method))
    if action is None:
        return _NO_ROUTE
    return ModelRoute(name=match["name"], version=match["version"] or "", action=action)


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str:
    """An address as a peer or an X-Forwarded-For entry writes it (bare, `[v6]`, `[v6]:port`,
    `v4:port`) → its canonical form (IPv4-mapped IPv6 as IPv4), or "" if it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return ""
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def client_address(peer: str, forwarded_for: str, trusted_hops: int) -> str:
    """The one client address every stage uses. With no trusted proxies: the peer Envoy reports,
    never a header. With `trusted_hops` proxies in front of Envoy: the X-Forwarded-For entry the
    nearest of them vouches for — Envoy appends the peer, so the entry trusted_hops + 1 from the
    right; entries further left are the client's own claims and never count. A header too short
    to hold that entry did not come through the proxies: the peer. An entry that is no IP
    address: "" (no CIDR contains it; the limiter counts it as the network "unknown")."""
    own = canonical_ip(peer) or peer
    if trusted_hops <= 0 or not forwarded_for:
        return own
    entries = forwarded_for.split(",")
    if len(entries) < trusted_hops + 1:
        return own
    return canonical_ip(entries[-(trusted_hops + 1)])


def parse_check_request(
    request: CheckRequest, max_body_bytes: int, trusted_hops: int = 0
) -> RequestView:
    """Build the typed view of one CheckRequest. Never raises on odd input. `trusted_hops`:
    proxies in front of Envoy whose X-Forwarded-For entries are believed (client_address)."""
    attrs = request.attributes
    http = attrs.request.http
    # Envoy has normalised the path already (normalize_path, merge_slashes); drop the query.
    path = http.path.split("?", 1)[0]
    method = http.method.upper()
    body = http.raw_body or http.body.encode()
    headers = dict(http.headers)
    peer = attrs.source.address.socket_address.address
    return RequestView(
        request_id=headers.get("x-request-id") or http.id,
        method=method,
        path=path,
        host=http.host,
        source_ip=client_address(peer, headers.get("x-forwarded-for", ""), trusted_hops),
        headers=headers,
        route=parse_route(method, path),
        body=body[:max_body_bytes],
        tls_principal=attrs.source.principal,
        scheme=http.scheme.lower(),
        # Envoy sends the peer certificate URL-encoded (include_peer_certificate: true).
        peer_certificate=unquote(attrs.source.certificate) if attrs.source.certificate else "",
        peer_ip=peer,
    )
