"""Decision → CheckResponse. Denials carry a fixed generic body and never the reason."""

from __future__ import annotations

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import (
    CheckResponse,
    DeniedHttpResponse,
    OkHttpResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.rpc import status_pb2

from extauthz.authn.authenticator import CREDENTIAL_HEADERS
from extauthz.shaping.plan import CACHE_MODES, cache_headers, to_metadata
from extauthz.types import Decision, LimitResult, Status, WindowState

UPSTREAM_PREFIX = "x-extauthz-"
# the model version the policy chose; Envoy routes on it (one route per version). Always set by
# us on an allow for a versioned model, so a client-sent value is overwritten, never believed.
MODEL_VERSION_HEADER = "x-extauthz-model-version"

BODIES: dict[Status, bytes] = {
    Status.UNAUTHENTICATED: b'{"error":"unauthenticated"}',
    Status.FORBIDDEN: b'{"error":"forbidden"}',
    Status.RATE_LIMITED: b'{"error":"rate_limited"}',
    Status.UNAVAILABLE: b'{"error":"unavailable"}',
}
# google.rpc.Code for the CheckResponse status; Envoy only tests it against OK.
_GRPC_CODE = {
    Status.OK: 0,
    Status.UNAUTHENTICATED: 16,
    Status.FORBIDDEN: 7,
    Status.RATE_LIMITED: 8,
    Status.UNAVAILABLE: 14,
}
_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _header(name: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=name, value=value), append_action=_OVERWRITE)


def ratelimit_headers(windows: tuple[WindowState, ...]) -> list[tuple[str, str]]:
    """RateLimit-Policy and RateLimit (draft-ietf-httpapi-ratelimit-headers, structured fields)."""
    if not windows:
        return []
    policy = ", ".join(f'"{s.window.name}";q={s.window.limit};w={s.window.window}' for s in windows)
    state = ", ".join(f'"{s.window.name}";r={s.remaining};t={s.reset}' for s in windows)
    return [("ratelimit-policy", policy), ("ratelimit", state)]


def _limit_headers(limits: LimitResult | None) -> list[tuple[str, str]]:
    return ratelimit_headers(limits.windows) if limits else []


def _spelled_as(name: str) -> str:
    """A header name the way an upstream that folds case and `_` into `-` reads it."""
    return name.lower().replace("_", "-")


def headers_to_strip(request_headers: dict[str, str], upstream: dict[str, str]) -> list[str]:
    """Client-sent headers that must not reach the model server: credentials, and every
    x-extauthz-* we do not overwrite — in any spelling (`x_extauthz_subject`, `X-ExtAuthz-…`),
    since Envoy may be configured to pass underscores and a server may fold them into dashes."""
    removed = []
    for name in request_headers:
        spelled = _spelled_as(name)
        if spelled in CREDENTIAL_HEADERS:
            removed.append(name)
        elif spelled.startswith(UPSTREAM_PREFIX) and name not in upstream:
            removed.append(name)
    return removed


# Cache-Control and Vary of allowed answers, per the plan's cache mode (built once)
_CACHE_HEADERS = {
    mode: [_header(k, v) for k, v in cache_headers(mode, CREDENTIAL_HEADERS)]
    for mode in CACHE_MODES
}


def build_ok(decision: Decision, request_headers: dict[str, str]) -> CheckResponse:
    upstream = dict(decision.upstream_headers)
    removed = headers_to_strip(request_headers, upstream)
    plan = decision.plan
    response = CheckResponse(
        status=status_pb2.Status(code=0),
        ok_response=OkHttpResponse(
            headers=[_header(k, v) for k, v in upstream.items()],
            headers_to_remove=removed,
            response_headers_to_add=[
                *_CACHE_HEADERS[plan.cache],
                *(_header(k, v) for k, v in _limit_headers(decision.limits)),
            ],
        ),
    )
    if plan.shapes:
        # Envoy routes on this metadata (the `shaped` route, with ext_proc); clients cannot
        # write dynamic metadata, so no request can add, alter or remove a plan.
        metadata = to_metadata(plan, request_headers.get("x-request-id", ""), decision.decision_id)
        response.dynamic_metadata.update(metadata)
    return response


def challenge(request_headers: dict[str, str]) -> str:
    """WWW-Authenticate of a 401 (RFC 6750 §3, RFC 9449 §7.1): the scheme the client used, with
    error="invalid_token" when it presented a credential. Nothing else, whatever the reason."""
    scheme = request_headers.get("authorization", "").strip().partition(" ")[0].lower()
    if scheme == "dpop":
        return 'DPoP error="invalid_token"'
    if scheme == "bearer" or "x-api-key" in request_headers:
        return 'Bearer error="invalid_token"'
    return "Bearer"


def build_denied(
    decision: Decision, request_headers: dict[str, str] | None = None
) -> CheckResponse:
    status = decision.status
    headers = [("content-type", "application/json"), ("cache-control", "no-store")]
    if status is Status.UNAUTHENTICATED:
        # a stage may set its own RFC-defined challenge (DPoP use_dpop_nonce + DPoP-Nonce)
        own = dict(decision.denial_headers)
        www = own.pop("www-authenticate", "") or challenge(request_headers or {})
        headers.append(("www-authenticate", www))
        headers.extend(own.items())
    if status is Status.RATE_LIMITED and decision.limits is not None:
        headers.append(("retry-after", str(decision.limits.retry_after)))
        headers.extend(_limit_headers(decision.limits))
    return CheckResponse(
        status=status_pb2.Status(code=_GRPC_CODE.get(status, 7)),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=int(status)),
            headers=[_header(k, v) for k, v in headers],
            body=BODIES[status].decode(),
        ),
    )


def build_response(decision: Decision, request_headers: dict[str, str]) -> CheckResponse:
    if decision.allowed:
        return build_ok(decision, request_headers)
    return build_denied(decision, request_headers)
