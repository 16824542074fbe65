"""CheckRequest → RequestView: the one place that reads Envoy's request attributes."""

from __future__ import annotations

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


def parse_check_request(request: CheckRequest, max_body_bytes: int) -> RequestView:
    """Build the typed view of one CheckRequest. Never raises on odd input."""
    attrs = request.attributes
    http = attrs.request.http
    # Envoy has normalised the path already (normalize_path, merge_slashes); drop the query.
    path = http.path.split("?", 1)[0]
    method = http.method.upper()
    body = http.raw_body or http.body.encode()
    headers = dict(http.headers)
    return RequestView(
        request_id=headers.get("x-request-id") or http.id,
        method=method,
        path=path,
        host=http.host,
        source_ip=attrs.source.address.socket_address.address,
        headers=headers,
        route=parse_route(method, path),
        body=body[:max_body_bytes],
        tls_principal=attrs.source.principal,
        scheme=http.scheme.lower(),
        # Envoy sends the peer certificate URL-encoded (include_peer_certificate: true).
        peer_certificate=unquote(attrs.source.certificate) if attrs.source.certificate else "",
    )
