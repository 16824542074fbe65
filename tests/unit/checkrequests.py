"""Build real CheckRequest messages (xds-protos) for tests and benches."""

from __future__ import annotations

from envoy.service.auth.v3.external_auth_pb2 import CheckRequest


def check_request(
    method: str = "POST",
    path: str = "/v2/models/digits/infer",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    source_ip: str = "127.0.0.1",
    request_id: str = "req-1",
) -> CheckRequest:
    req = CheckRequest()
    http = req.attributes.request.http
    http.id = request_id
    http.method = method
    http.path = path
    http.host = "gateway"
    http.headers.update(headers or {})
    http.raw_body = body
    req.attributes.source.address.socket_address.address = source_ip
    return req
