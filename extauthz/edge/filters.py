"""The gateway's HTTP filters: ext_authz (the decision), custom_response (the model server's
errors made generic), ext_proc (response shaping), the router; the generic local replies and the
access log every connection manager has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extauthz.edge.proto import (
    Struct,
    accesslog,
    core,
    custom_response,
    envoy_type,
    ext_authz,
    ext_proc,
    file_log,
    hcm,
    local_response,
    matcher,
    pack,
    router,
    seconds,
    xds_core,
    xds_matcher,
)
from extauthz.settings import Settings

_JSON_HEADERS = (("content-type", "application/json"), ("cache-control", "no-store"))


def _status_filter(code: int, op: str = "EQ") -> accesslog.AccessLogFilter:
    return accesslog.AccessLogFilter(
        status_code_filter=accesslog.StatusCodeFilter(
            comparison=accesslog.ComparisonFilter(
                op=accesslog.ComparisonFilterOp[op],
                value=core.RuntimeUInt32(default_value=code, runtime_key=f"_unused_{op}_{code}"),
            )
        )
    )


def _json_body(text: str) -> core.SubstitutionFormatString:
    return core.SubstitutionFormatString(
        text_format_source=core.DataSource(inline_string=text), content_type="application/json"
    )


def local_reply_config() -> hcm.LocalReplyConfig:
    """Envoy's own replies get the same generic JSON bodies as extauthz's denials. The first
    two mappers keep extauthz's denials (response flag UAEX) as they are; an ext_authz failure
    (service down) is a UAEX 503 and gets the unavailable body."""
    uaex = accesslog.AccessLogFilter(
        response_flag_filter=accesslog.ResponseFlagFilter(flags=["UAEX"])
    )
    mapped = [
        (401, "unauthenticated"),
        (403, "forbidden"),
        (404, "not_found"),
        (413, "payload_too_large"),
        (431, "headers_too_large"),
        (429, "rate_limited"),
    ]
    return hcm.LocalReplyConfig(
        mappers=[
            hcm.ResponseMapper(
                filter=accesslog.AccessLogFilter(
                    and_filter=accesslog.AndFilter(filters=[uaex, _status_filter(503)])
                ),
                body_format_override=_json_body('{"error":"unavailable"}'),
            ),
            hcm.ResponseMapper(filter=uaex),
            *(
                hcm.ResponseMapper(
                    filter=_status_filter(code),
                    body_format_override=_json_body(f'{{"error":"{name}"}}'),
                )
                for code, name in mapped
            ),
            hcm.ResponseMapper(
                filter=_status_filter(500, "GE"),
                status_code=503,
                body_format_override=_json_body('{"error":"unavailable"}'),
            ),
            hcm.ResponseMapper(
                filter=_status_filter(400, "GE"),
                body_format_override=_json_body('{"error":"bad_request"}'),
            ),
        ]
    )


def access_log(path: Path) -> accesslog.AccessLog:
    fields = {
        "time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(:PATH)%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "duration_ms": "%DURATION%",
        "upstream": "%UPSTREAM_HOST%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }
    return accesslog.AccessLog(
        name="envoy.access_loggers.file",
        typed_config=pack(
            file_log.FileAccessLog(
                path=str(path),
                log_format=core.SubstitutionFormatString(json_format=Struct.from_dict(fields)),
            )
        ),
    )


def ext_authz_filter(
    cluster_name: str, max_body_bytes: int, *, clear_route_cache: bool
) -> hcm.HttpFilter:
    """The V2 inference body goes to the policy (bounded); larger bodies get 413.
    `clear_route_cache`: the route is chosen again after an allow, so the headers and dynamic
    metadata extauthz sets (a shaping plan, a model version) select the route."""
    return hcm.HttpFilter(
        name="envoy.filters.http.ext_authz",
        typed_config=pack(
            ext_authz.ExtAuthz(
                transport_api_version=core.ApiVersion.V3,
                **_fail_closed_grpc(cluster_name),
                with_request_body=ext_authz.BufferSettings(
                    max_request_bytes=max_body_bytes,
                    allow_partial_message=False,
                    pack_as_bytes=True,
                ),
                include_peer_certificate=True,
                clear_route_cache=clear_route_cache,
            )
        ),
    )


def _from_upstream() -> xds_matcher.MatcherMatcherListPredicateSinglePredicate:
    """Only answers from upstream carry the router's x-envoy-upstream-service-time: extauthz's
    own denials are local replies and pass untouched."""
    return xds_matcher.MatcherMatcherListPredicateSinglePredicate(
        input=xds_core.TypedExtensionConfig(
            name="upstream",
            typed_config=pack(
                matcher.HttpResponseHeaderMatchInput(header_name="x-envoy-upstream-service-time")
            ),
        ),
        value_match=xds_matcher.StringMatcher(
            safe_regex=xds_matcher.RegexMatcher(
                google_re2=xds_matcher.RegexMatcherGoogleRe2(), regex=".*"
            )
        ),
    )


def custom_response_filter() -> hcm.HttpFilter:
    """The model server's 4xx/5xx become the gateway's generic bodies (as local_reply_config
    does for Envoy's own replies) without a hop; on the shaped route ext_proc sees (and logs)
    the original first, since response filters run in reverse order."""
    statuses = [
        ("401", False, "unauthenticated", 401),
        ("403", False, "forbidden", 403),
        ("404", False, "not_found", 404),
        ("413", False, "payload_too_large", 413),
        ("429", False, "rate_limited", 429),
        ("4xx", True, "bad_request", 400),
        ("5xx", True, "unavailable", 503),
    ]
    headers = [
        core.HeaderValueOption(
            header=core.HeaderValue(key=k, value=v),
            append_action=core.HeaderValueOptionHeaderAppendAction.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        for k, v in _JSON_HEADERS
    ]
    matchers = []
    for value, is_class, name, status in statuses:
        status_input = (
            matcher.HttpResponseStatusCodeClassMatchInput()
            if is_class
            else matcher.HttpResponseStatusCodeMatchInput()
        )
        matchers.append(
            xds_matcher.MatcherMatcherListFieldMatcher(
                predicate=xds_matcher.MatcherMatcherListPredicate(
                    and_matcher=xds_matcher.MatcherMatcherListPredicatePredicateList(
                        predicate=[
                            xds_matcher.MatcherMatcherListPredicate(
                                single_predicate=_from_upstream()
                            ),
                            xds_matcher.MatcherMatcherListPredicate(
                                single_predicate=xds_matcher.MatcherMatcherListPredicateSinglePredicate(
                                    input=xds_core.TypedExtensionConfig(
                                        name="status", typed_config=pack(status_input)
                                    ),
                                    value_match=xds_matcher.StringMatcher(exact=value),
                                )
                            ),
                        ]
                    )
                ),
                on_match=xds_matcher.MatcherOnMatch(
                    action=xds_core.TypedExtensionConfig(
                        name=name,
                        typed_config=pack(
                            local_response.LocalResponsePolicy(
                                body=core.DataSource(inline_string=f'{{"error":"{name}"}}'),
                                status_code=status,
                                response_headers_to_add=headers,
                            )
                        ),
                    )
                ),
            )
        )
    return hcm.HttpFilter(
        name="envoy.filters.http.custom_response",
        typed_config=pack(
            custom_response.CustomResponse(
                custom_response_matcher=xds_matcher.Matcher(
                    matcher_list=xds_matcher.MatcherMatcherList(matchers=matchers)
                )
            )
        ),
    )


def processing_mode(*, response: bool) -> ext_proc.ProcessingMode:
    send, skip = (
        ext_proc.ProcessingModeHeaderSendMode.SEND,
        ext_proc.ProcessingModeHeaderSendMode.SKIP,
    )
    body = ext_proc.ProcessingModeBodySendMode
    return ext_proc.ProcessingMode(
        request_header_mode=skip,
        request_body_mode=body.NONE,
        request_trailer_mode=skip,
        response_header_mode=send if response else skip,
        response_body_mode=body.BUFFERED if response else body.NONE,
        response_trailer_mode=skip,
    )


def ext_proc_filter(cluster_name: str) -> hcm.HttpFilter:
    """Response shaping (extauthz/shaping/processor.py). Off unless the route turns it on
    (`shaped`): a reply that never had a route (a codec error: underscores in a header name,
    headers too large) must not reach the processor either."""
    return hcm.HttpFilter(
        name="envoy.filters.http.ext_proc",
        typed_config=pack(
            ext_proc.ExternalProcessor(
                **_fail_closed_grpc(cluster_name),
                message_timeout=seconds(1),
                processing_mode=processing_mode(response=False),
                metadata_options=ext_proc.MetadataOptions(
                    forwarding_namespaces=ext_proc.MetadataOptionsMetadataNamespaces(
                        untyped=["envoy.filters.http.ext_authz"]
                    )
                ),
                disable_clear_route_cache=True,
            )
        ),
    )


def router_filter() -> hcm.HttpFilter:
    return hcm.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router.Router()))


def inference_filters(s: Settings, *, shaping: bool = True) -> list[hcm.HttpFilter]:
    """The gateway's HTTP filters; without `shaping`, main's chain before issue 13 (no ext_proc,
    no custom_response, no route re-selection after ext_authz: bench/shaping.py's base)."""
    authz = ext_authz_filter("extauthz", s.max_body_bytes, clear_route_cache=shaping)
    if not shaping:
        return [authz, router_filter()]
    return [authz, custom_response_filter(), ext_proc_filter("extauthz_shaping"), router_filter()]


def _fail_closed_grpc(cluster_name: str) -> dict[str, Any]:
    """A gRPC service of ours (1 s budget) that, unreachable or failing, is a 503, never an
    allow: shared by ext_authz and ext_proc."""
    return {
        "grpc_service": core.GrpcService(
            envoy_grpc=core.GrpcServiceEnvoyGrpc(cluster_name=cluster_name), timeout=seconds(1)
        ),
        "failure_mode_allow": False,
        "status_on_error": envoy_type.HttpStatus(code=envoy_type.StatusCode.ServiceUnavailable),
    }
