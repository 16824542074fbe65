"""CheckRequest → RequestView: the one place that reads Envoy's request attributes."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Forwarding:
    """Who may name the client in X-Forwarded-For (settings trusted_hops, trusted_proxies)."""

    hops: int = 0  # proxies in front of Envoy; 0: the peer, never the header
    proxies: tuple[Network, ...] = ()  # their addresses; (): every peer counts as a proxy
    # address -> inside `proxies`: ipaddress parsing + membership cost ~10 us; peers are few
    _seen: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def parse(cls, hops: int, proxies: str) -> Forwarding:
        """From the settings; a malformed range raises ValueError (the start-up stops)."""
        ranges = [c.strip() for c in proxies.split(",") if c.strip()]
        return cls(hops, tuple(ipaddress.ip_network(c, strict=False) for c in ranges))

    def is_proxy(self, address: str) -> bool:
        known = self._seen.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                return False
            known = any(ip in net for net in self.proxies)
            if len(self._seen) < 4096:
                self._seen[address] = known
        return known


NO_FORWARDING = Forwarding()


def client_address(peer: str, forwarded_for: str, forwarding: Forwarding) -> str:
    """The one client address every stage uses: the peer Envoy reports, or behind trusted proxies
    the X-Forwarded-For entry the nearest of them vouches for. Envoy appends the peer, so with
    `hops` proxies that is the entry hops + 1 from the right; entries further left are the
    client's own claims and never count. A header too short to hold it did not come through the
    proxies: the peer. With `proxies` given, the walk from the right goes one entry further only
    while the address in hand is one of them, so a peer that is no proxy (or a client that
    skipped the outer proxies) names nobody but itself. An entry that is no IP address: ""
    (no range contains it; the limiter counts it as the network "unknown")."""
    own = canonical_ip(peer) or peer
    hops = forwarding.hops
    if hops <= 0 or not forwarded_for:
        return own
    entries = forwarded_for.split(",")
    if not forwarding.proxies:
        return own if len(entries) < hops + 1 else canonical_ip(entries[-(hops + 1)])
    address = own
    for back in range(2, min(hops + 1, len(entries)) + 1):
        if not forwarding.is_proxy(address):
            break
        address = canonical_ip(entries[-back])
    return address


def parse_check_request(
    request: CheckRequest, max_body_bytes: int, forwarding: Forwarding = NO_FORWARDING
) -> RequestView:
    """Build the typed view of one CheckRequest. Never raises on odd input. `forwarding`: whose
    X-Forwarded-For entries name the client (client_address)."""
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
        source_ip=client_address(peer, headers.get("x-forwarded-for", ""), forwarding),
        headers=headers,
        route=parse_route(method, path),
        body=body[:max_body_bytes],
        tls_principal=attrs.source.principal,
        scheme=http.scheme.lower(),
        # Envoy sends the peer certificate URL-encoded (include_peer_certificate: true).
        peer_certificate=unquote(attrs.source.certificate) if attrs.source.certificate else "",
        peer_ip=peer,
    )
