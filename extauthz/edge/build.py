"""The typed builder of Envoy's configuration (envoy-data-plane's classes: a wrong field name or
type fails here, in Python, before Envoy sees it). Pure: no file is read or written here.

One connection manager (`connection_manager`) serves every listener: the plain one (local
development), the TLS one (every client), the mTLS one (service identities), the benchmark's;
only the HTTP filters and the route source differ. Routes come from the model catalog
(`model_routes`, one function per model), model clusters likewise (`model_clusters`).

Why each setting is what it is: the comment beside it (README, "The edge", for the hardening).
"""

from __future__ import annotations

import copy
import datetime
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import betterproto2
from pydantic.warnings import PydanticDeprecatedSince212

from extauthz.edge.catalog import Model, Version
from extauthz.settings import Settings

# envoy-data-plane 2.2.0's generated validators use a form pydantic 2.12+ deprecates (warned
# once, at import; the tests turn warnings into errors)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PydanticDeprecatedSince212)
    from envoy_data_plane.envoy.config.accesslog import v3 as accesslog
    from envoy_data_plane.envoy.config.bootstrap import v3 as bootstrap
    from envoy_data_plane.envoy.config.cluster import v3 as cluster
    from envoy_data_plane.envoy.config.core import v3 as core
    from envoy_data_plane.envoy.config.endpoint import v3 as endpoint
    from envoy_data_plane.envoy.config.listener import v3 as listener
    from envoy_data_plane.envoy.config.overload import v3 as overload
    from envoy_data_plane.envoy.config.route import v3 as route
    from envoy_data_plane.envoy.extensions.access_loggers.file import v3 as file_log
    from envoy_data_plane.envoy.extensions.filters.http.custom_response import v3 as custom_response
    from envoy_data_plane.envoy.extensions.filters.http.ext_authz import v3 as ext_authz
    from envoy_data_plane.envoy.extensions.filters.http.ext_proc import v3 as ext_proc
    from envoy_data_plane.envoy.extensions.filters.http.router import v3 as router
    from envoy_data_plane.envoy.extensions.filters.network.http_connection_manager import v3 as hcm
    from envoy_data_plane.envoy.extensions.http.custom_response.local_response_policy import (
        v3 as local_response,
    )
    from envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections import (
        v3 as downstream_connections,
    )
    from envoy_data_plane.envoy.extensions.resource_monitors.fixed_heap import v3 as fixed_heap
    from envoy_data_plane.envoy.extensions.transport_sockets.tls import v3 as tls
    from envoy_data_plane.envoy.extensions.upstreams.http import v3 as upstream_http
    from envoy_data_plane.envoy.type import v3 as envoy_type
    from envoy_data_plane.envoy.type.matcher import v3 as matcher
    from envoy_data_plane.google.protobuf import Any as PbAny
    from envoy_data_plane.google.protobuf import Struct
    from envoy_data_plane.xds.core import v3 as xds_core
    from envoy_data_plane.xds.type.matcher import v3 as xds_matcher


# The header extauthz sets on an allow for a model with versions (the version it chose for this
# caller); clients cannot set it (extauthz strips client-sent x-extauthz-* headers).
VERSION_HEADER = "x-extauthz-model-version"
MODEL_SERVER = "model_server"
ROUTE_CONFIG = "inference"
TLS_SECRET = "edge_server_cert"  # noqa: S105 - the SDS secret's name (TLS and mTLS listeners)
# TLS 1.2's modern AEAD suites (TLS 1.3's are fixed by BoringSSL and all modern)
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
_JSON_HEADERS = (("content-type", "application/json"), ("cache-control", "no-store"))


def seconds(value: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=value)


def pack(message: betterproto2.Message) -> PbAny:
    return PbAny.pack(message)


def to_dict(message: betterproto2.Message) -> dict[str, Any]:
    """The message as Envoy's JSON, fields named as in the .proto files (and Envoy's
    documentation). Not betterproto2's own casings: they spell `consecutive_5xx` as
    `consecutive_5_xx` (SNAKE) or `consecutive5Xx` (CAMEL), which Envoy refuses."""
    return message.to_dict(casing=_proto_name)  # type: ignore[arg-type]


def _proto_name(name: str) -> str:
    return name


def config_source(path: Path) -> core.ConfigSource:
    """A resource read from `path`, reloaded when a file is renamed into its directory (the
    writers in render.py replace files by rename, so Envoy never reads half a file)."""
    return core.ConfigSource(
        path_config_source=core.PathConfigSource(
            path=str(path), watched_directory=core.WatchedDirectory(path=str(path.parent))
        ),
        resource_api_version=core.ApiVersion.V3,
    )


@dataclass(frozen=True)
class Files:
    """Where the generated configuration points Envoy. `xds_dir` None: routes and model
    clusters inline in the bootstrap (what `envoy --mode validate` checks whole, and the
    bench); otherwise RDS and CDS from files under it. `tls_secret` None: the certificate
    files inline; otherwise the server certificate by SDS from that file."""

    access_log: Path
    server_cert: Path
    server_key: Path
    client_ca: Path
    xds_dir: Path | None = None
    tls_secret: Path | None = None

    @property
    def rds_file(self) -> Path:
        assert self.xds_dir is not None
        return self.xds_dir / "rds" / "routes.json"

    @property
    def cds_file(self) -> Path:
        assert self.xds_dir is not None
        return self.xds_dir / "cds" / "clusters.json"


# ---------------------------------------------------------------- filters


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
                grpc_service=core.GrpcService(
                    envoy_grpc=core.GrpcServiceEnvoyGrpc(cluster_name=cluster_name),
                    timeout=seconds(1),
                ),
                failure_mode_allow=False,
                status_on_error=envoy_type.HttpStatus(
                    code=envoy_type.StatusCode.ServiceUnavailable
                ),
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


def _processing_mode(*, response: bool) -> ext_proc.ProcessingMode:
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
                grpc_service=core.GrpcService(
                    envoy_grpc=core.GrpcServiceEnvoyGrpc(cluster_name=cluster_name),
                    timeout=seconds(1),
                ),
                failure_mode_allow=False,
                status_on_error=envoy_type.HttpStatus(
                    code=envoy_type.StatusCode.ServiceUnavailable
                ),
                message_timeout=seconds(1),
                processing_mode=_processing_mode(response=False),
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


# ---------------------------------------------------------------- routes


def _route(
    name: str,
    match: route.RouteMatch,
    cluster_name: str,
    timeout_s: float,
    *,
    shaped: bool | None,
    rewrite: matcher.RegexMatchAndSubstitute | None = None,
) -> route.Route:
    """A route to `cluster_name`. `shaped` True: only for requests whose ext_authz dynamic
    metadata carries a `shape` plan (clients cannot write it), with ext_proc on; False: ext_proc
    off, the answer streams through; None: no shaping filters at all (bench/shaping.py's base)."""
    per_filter: dict[str, PbAny] = {}
    remove: list[str] = []
    if shaped:
        match = copy.deepcopy(match)  # the plain variant keeps the original
        match.dynamic_metadata.append(
            matcher.MetadataMatcher(
                filter="envoy.filters.http.ext_authz",
                path=[matcher.MetadataMatcherPathSegment(key="shape")],
                value=matcher.ValueMatcher(present_match=True),
            )
        )
        remove = ["accept-encoding"]  # the processor shapes identity-encoded JSON only
        per_filter["envoy.filters.http.ext_proc"] = pack(
            ext_proc.ExtProcPerRoute(
                overrides=ext_proc.ExtProcOverrides(processing_mode=_processing_mode(response=True))
            )
        )
        name = f"{name}/shaped"
    elif shaped is False:
        per_filter["envoy.filters.http.ext_proc"] = pack(ext_proc.ExtProcPerRoute(disabled=True))
    return route.Route(
        name=name,
        match=match,
        route=route.RouteAction(
            cluster=cluster_name, timeout=seconds(timeout_s), regex_rewrite=rewrite
        ),
        request_headers_to_remove=remove,
        typed_per_filter_config=per_filter,
    )


def _variants(
    name: str,
    match: route.RouteMatch,
    cluster_name: str,
    timeout_s: float,
    shaping: bool,
    **kw: Any,
) -> list[route.Route]:
    """The shaped variant first (it is the more specific), then the plain one."""
    if not shaping:
        return [_route(name, match, cluster_name, timeout_s, shaped=None, **kw)]
    return [
        _route(name, match, cluster_name, timeout_s, shaped=True, **kw),
        _route(name, match, cluster_name, timeout_s, shaped=False, **kw),
    ]


def version_cluster(model: str, version: Version) -> str:
    """The cluster a version's route goes to: its `upstream`, else its own (model server's
    endpoint) cluster."""
    return version.upstream or f"model-{model}-{version.name}"


def model_routes(model: Model, s: Settings, *, shaping: bool = True) -> list[route.Route]:
    """Every route of one catalog model: `/v2/models/<model>` and below it.

    Without versions: one route to the model server. With versions: one route per version,
    matched by the x-extauthz-model-version header extauthz set (the version it chose for this
    caller), to the version's cluster, the path rewritten to MLServer's versioned path; then a
    404 for the model's path without a valid version header (never the unversioned model)."""
    timeout = model.timeout_s or s.envoy_route_timeout
    base = f"/v2/models/{model.name}"
    if not model.versions:
        match = route.RouteMatch(path_separated_prefix=base)
        return _variants(f"model/{model.name}", match, MODEL_SERVER, timeout, shaping)
    routes = []
    quoted = re.escape(model.name)
    for version in model.versions:
        match = route.RouteMatch(
            path_separated_prefix=base,
            headers=[
                route.HeaderMatcher(
                    name=VERSION_HEADER, string_match=matcher.StringMatcher(exact=version.name)
                )
            ],
        )
        rewrite = matcher.RegexMatchAndSubstitute(
            pattern=matcher.RegexMatcher(regex=rf"^/v2/models/{quoted}(/versions/[^/]+)?(/.*)?$"),
            substitution=f"{base}/versions/{version.name}\\2",
        )
        routes += _variants(
            f"model/{model.name}/{version.name}",
            match,
            version_cluster(model.name, version),
            timeout,
            shaping,
            rewrite=rewrite,
        )
    routes.append(
        route.Route(
            name=f"model/{model.name}/no-version",
            match=route.RouteMatch(path_separated_prefix=base),
            direct_response=route.DirectResponseAction(
                status=404, body=core.DataSource(inline_string='{"error":"not_found"}')
            ),
        )
    )
    return routes


def route_configuration(
    s: Settings, models: tuple[Model, ...], *, shaping: bool = True, inline: bool = False
) -> route.RouteConfiguration:
    """The `inference` routes: each catalog model's, then everything else (health, server
    metadata, unknown models: extauthz decides) to the model server. `inline` (in the
    bootstrap, every cluster static): Envoy refuses a route naming a cluster that is not there."""
    routes = [r for m in models for r in model_routes(m, s, shaping=shaping)]
    routes += _variants(
        "default", route.RouteMatch(prefix="/"), MODEL_SERVER, s.envoy_route_timeout, shaping
    )
    return route.RouteConfiguration(
        name=ROUTE_CONFIG,
        virtual_hosts=[route.VirtualHost(name="models", domains=["*"], routes=routes)],
        # by RDS a route may name a cluster CDS has not delivered yet (503 until it has)
        validate_clusters=inline,
    )


# ---------------------------------------------------------------- connection manager


def connection_manager(
    stat_prefix: str,
    http_filters: list[hcm.HttpFilter],
    log_path: Path,
    *,
    route_config: route.RouteConfiguration | None = None,
    rds_file: Path | None = None,
) -> listener.Filter:
    """The HTTP connection manager of every gateway listener (and the bench's): routes inline
    (`route_config`) or by RDS from `rds_file`."""
    manager = hcm.HttpConnectionManager(
        stat_prefix=stat_prefix,
        # The path extauthz sees is the path the model server gets: normalised once, here.
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action=hcm.HttpConnectionManagerPathWithEscapedSlashesAction.REJECT_REQUEST,
        max_request_headers_kb=32,
        common_http_protocol_options=core.HttpProtocolOptions(
            # x_extauthz_subject must not slip past the x-extauthz-* stripping: such names get 400
            headers_with_underscores_action=core.HttpProtocolOptionsHeadersWithUnderscoresAction.REJECT_REQUEST,
            # Envoy's default, written down: more headers than this get 431
            max_headers_count=100,
            # a kept-alive connection with no stream closes after an hour (edge guide)
            idle_timeout=seconds(3600),
        ),
        # HTTP/2 from clients (TLS listener, ALPN h2): the edge guide's limits
        http2_protocol_options=core.Http2ProtocolOptions(
            max_concurrent_streams=100,
            initial_stream_window_size=65536,  # 64 KiB
            initial_connection_window_size=1048576,  # 1 MiB
        ),
        # a client must send its headers within 10 s (slowloris), the whole request within 30 s
        request_headers_timeout=seconds(10),
        request_timeout=seconds(30),
        # a stream with no activity for 5 min is reset (Envoy's default, written down)
        stream_idle_timeout=seconds(300),
        server_header_transformation=hcm.HttpConnectionManagerServerHeaderTransformation.PASS_THROUGH,
        server_name="gateway",
        # the peer address is the client; X-Forwarded-For from clients is not trusted
        use_remote_address=True,
        # Clients get the request id to quote to support; the reason stays in the decision log.
        always_set_request_id_in_response=True,
        access_log=[access_log(log_path)],
        local_reply_config=local_reply_config(),
        http_filters=http_filters,
    )
    if rds_file is not None:
        manager.rds = hcm.Rds(config_source=config_source(rds_file), route_config_name=ROUTE_CONFIG)
    else:
        manager.route_config = route_config
    return listener.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )


# ---------------------------------------------------------------- listeners


def socket_address(port: int) -> core.Address:
    return core.Address(socket_address=core.SocketAddress(address="127.0.0.1", port_value=port))


def plain_listener(
    name: str, port: int, manager: listener.Filter, buffer_limit: int
) -> listener.Listener:
    return listener.Listener(
        name=name,
        address=socket_address(port),
        # ext_proc buffers a whole answer for shaping up to this (EXTAUTHZ_SHAPE_MAX_BODY_BYTES;
        # past it: 503, never half a body), so it is not the edge guide's 32 KiB
        per_connection_buffer_limit_bytes=buffer_limit,
        filter_chains=[listener.FilterChain(filters=[manager])],
    )


def tls_params() -> tls.TlsParameters:
    """TLS 1.2 at least, 1.3 preferred (the highest both sides speak wins), modern AEAD suites."""
    return tls.TlsParameters(
        tls_minimum_protocol_version=tls.TlsParametersTlsProtocol.TLSv1_2,
        tls_maximum_protocol_version=tls.TlsParametersTlsProtocol.TLSv1_3,
        cipher_suites=list(CIPHERS),
        ecdh_curves=["X25519", "P-256"],
    )


def _certificates(files: Files) -> dict[str, Any]:
    if files.tls_secret is not None:
        return {
            "tls_certificate_sds_secret_configs": [
                tls.SdsSecretConfig(name=TLS_SECRET, sds_config=config_source(files.tls_secret))
            ]
        }
    return {
        "tls_certificates": [
            tls.TlsCertificate(
                certificate_chain=core.DataSource(filename=str(files.server_cert)),
                private_key=core.DataSource(filename=str(files.server_key)),
            )
        ]
    }


def tls_listener(
    name: str,
    port: int,
    manager: listener.Filter,
    buffer_limit: int,
    files: Files,
    *,
    client_certificates: bool,
) -> listener.Listener:
    """TLS for every client (ALPN h2, http/1.1); with `client_certificates`, a certificate
    issued by the configured CA is required (mTLS service identities): a handshake without one,
    or with another CA's, is refused here, and extauthz verifies it again."""
    context = tls.CommonTlsContext(
        tls_params=tls_params(),
        alpn_protocols=["h2", "http/1.1"],
        **_certificates(files),
    )
    if client_certificates:
        context.validation_context = tls.CertificateValidationContext(
            trusted_ca=core.DataSource(filename=str(files.client_ca))
        )
    downstream = tls.DownstreamTlsContext(
        common_tls_context=context, require_client_certificate=client_certificates
    )
    plain = plain_listener(name, port, manager, buffer_limit)
    plain.filter_chains[0].transport_socket = core.TransportSocket(
        name="envoy.transport_sockets.tls", typed_config=pack(downstream)
    )
    return plain


def floor_listener(port: int) -> listener.Listener:
    """Benchmark floor ONLY (never in a deployment): the model server with no ext_authz."""
    manager = hcm.HttpConnectionManager(
        stat_prefix="floor",
        normalize_path=True,
        merge_slashes=True,
        route_config=route.RouteConfiguration(
            name="floor",
            validate_clusters=False,  # model_server may come by CDS
            virtual_hosts=[
                route.VirtualHost(
                    name="models",
                    domains=["*"],
                    routes=[
                        route.Route(
                            match=route.RouteMatch(prefix="/"),
                            route=route.RouteAction(cluster=MODEL_SERVER, timeout=seconds(15)),
                        )
                    ],
                )
            ],
        ),
        http_filters=[router_filter()],
    )
    return listener.Listener(
        name="floor",
        address=socket_address(port),
        filter_chains=[
            listener.FilterChain(
                filters=[
                    listener.Filter(
                        name="envoy.filters.network.http_connection_manager",
                        typed_config=pack(manager),
                    )
                ]
            )
        ],
    )


# ---------------------------------------------------------------- clusters


def static_cluster(
    name: str, port: int, *, h2: bool, connect_timeout: float = 0.25
) -> cluster.Cluster:
    out = cluster.Cluster(
        name=name,
        type=cluster.ClusterDiscoveryType.STATIC,
        connect_timeout=seconds(connect_timeout),
        load_assignment=endpoint.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint.LbEndpoint(
                            endpoint=endpoint.Endpoint(address=socket_address(port))
                        )
                    ]
                )
            ],
        ),
    )
    if h2:
        out.typed_extension_protocol_options = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": pack(
                upstream_http.HttpProtocolOptions(
                    explicit_http_config=upstream_http.HttpProtocolOptionsExplicitHttpConfig(
                        http2_protocol_options=core.Http2ProtocolOptions()
                    )
                )
            )
        }
    return out


def model_cluster(name: str, s: Settings) -> cluster.Cluster:
    """A cluster toward the model server (or a version of a model on it), with circuit
    breakers and outlier detection (README, "The edge": why these values)."""
    out = static_cluster(name, s.model_port, h2=False, connect_timeout=0.5)
    # the edge guide's 32 KiB: how much Envoy reads ahead from the model server before it
    # stops reading (backpressure); a shaped answer is still buffered whole, up to the
    # listener's limit
    out.per_connection_buffer_limit_bytes = 32768
    limit = s.envoy_model_max_requests
    out.circuit_breakers = cluster.CircuitBreakers(
        thresholds=[
            cluster.CircuitBreakersThresholds(
                priority=core.RoutingPriority.DEFAULT,
                max_connections=limit,
                max_pending_requests=limit,
                max_requests=limit,
                max_retries=3,
            )
        ]
    )
    out.outlier_detection = cluster.OutlierDetection(
        consecutive_5xx=5,
        consecutive_gateway_failure=5,
        interval=seconds(5),
        base_ejection_time=seconds(30),
        max_ejection_percent=50,
    )
    return out


def model_clusters(s: Settings, models: tuple[Model, ...]) -> list[cluster.Cluster]:
    """The model server's cluster and one per model version without its own `upstream`."""
    out = [model_cluster(MODEL_SERVER, s)]
    for model in models:
        for version in model.versions:
            if not version.upstream:
                out.append(model_cluster(version_cluster(model.name, version), s))
    return out


def service_clusters(s: Settings) -> list[cluster.Cluster]:
    return [
        static_cluster("extauthz", s.port, h2=True),
        static_cluster("extauthz_shaping", s.shape_port or s.port, h2=True),
    ]


# ---------------------------------------------------------------- bootstrap


def overload_manager(s: Settings) -> overload.OverloadManager:
    """The edge guide's overload manager: heap (fixed heap monitor: shrink the heap at 95 %,
    refuse new requests at 98 %) and downstream connections (the global monitor: past the
    limit new connections are refused)."""
    heap = "envoy.resource_monitors.fixed_heap"

    def at(value: float) -> list[overload.Trigger]:
        return [overload.Trigger(name=heap, threshold=overload.ThresholdTrigger(value=value))]

    return overload.OverloadManager(
        refresh_interval=seconds(0.25),
        resource_monitors=[
            overload.ResourceMonitor(
                name=heap,
                typed_config=pack(
                    fixed_heap.FixedHeapConfig(max_heap_size_bytes=s.envoy_max_heap_bytes)
                ),
            ),
            overload.ResourceMonitor(
                name="envoy.resource_monitors.global_downstream_max_connections",
                typed_config=pack(
                    downstream_connections.DownstreamConnectionsConfig(
                        max_active_downstream_connections=s.envoy_max_connections
                    )
                ),
            ),
        ],
        actions=[
            overload.OverloadAction(name="envoy.overload_actions.shrink_heap", triggers=at(0.95)),
            overload.OverloadAction(
                name="envoy.overload_actions.stop_accepting_requests", triggers=at(0.98)
            ),
        ],
    )


@dataclass(frozen=True)
class Ports:
    """The gateway's listeners; 0 leaves one out."""

    plain: int
    tls: int
    mtls: int
    admin: int
    floor: int = 0


def gateway_ports(s: Settings, floor: int = 0) -> Ports:
    return Ports(s.envoy_port, s.envoy_tls_port, s.envoy_mtls_port, s.envoy_admin_port, floor)


def gateway_bootstrap(
    s: Settings,
    models: tuple[Model, ...],
    files: Files,
    ports: Ports,
    *,
    shaping: bool = True,
) -> bootstrap.Bootstrap:
    """The dev stack's (and a deployment's) Envoy: plain, TLS and mTLS listeners sharing one
    connection manager, extauthz's clusters; routes and model clusters inline or from files."""
    dynamic = files.xds_dir is not None
    filters = inference_filters(s, shaping=shaping)
    routes = None if dynamic else route_configuration(s, models, shaping=shaping, inline=True)
    rds = files.rds_file if dynamic else None

    def manager(prefix: str) -> listener.Filter:
        return connection_manager(
            prefix, filters, files.access_log, route_config=routes, rds_file=rds
        )

    limit = s.shape_max_body_bytes
    listeners = []
    if ports.plain:
        listeners.append(plain_listener("inference", ports.plain, manager("inference"), limit))
    if ports.tls:
        listeners.append(
            tls_listener(
                "inference_tls",
                ports.tls,
                manager("inference_tls"),
                limit,
                files,
                client_certificates=False,
            )
        )
    if ports.mtls:
        listeners.append(
            tls_listener(
                "inference_mtls",
                ports.mtls,
                manager("inference"),
                limit,
                files,
                client_certificates=True,
            )
        )
    if ports.floor:
        listeners.append(floor_listener(ports.floor))
    clusters = service_clusters(s) + ([] if dynamic else model_clusters(s, models))
    out = bootstrap.Bootstrap(
        # file-based xDS needs a node identity
        node=core.Node(id="extauthz-gateway", cluster="extauthz-gateway"),
        admin=bootstrap.Admin(address=socket_address(ports.admin)),
        static_resources=bootstrap.BootstrapStaticResources(listeners=listeners, clusters=clusters),
        overload_manager=overload_manager(s),
    )
    if dynamic:
        out.dynamic_resources = bootstrap.BootstrapDynamicResources(
            cds_config=config_source(files.cds_file)
        )
    return out
