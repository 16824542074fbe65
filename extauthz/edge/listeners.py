"""The listeners and the one HTTP connection manager they share (plain: local development; TLS:
every client; mTLS: service identities; the floor and the bench's), TLS parameters and the
certificate by SDS."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extauthz.edge.filters import access_log, local_reply_config, router_filter
from extauthz.edge.proto import (
    config_source,
    core,
    hcm,
    listener,
    pack,
    route,
    seconds,
    socket_address,
    tls,
)
from extauthz.edge.routes import MODEL_SERVER, ROUTE_CONFIG

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


def connection_manager(
    stat_prefix: str,
    http_filters: list[hcm.HttpFilter],
    log_path: Path,
    *,
    route_config: route.RouteConfiguration | None = None,
    rds_file: Path | None = None,
    headers_timeout: float = 10.0,
) -> listener.Filter:
    """The HTTP connection manager of every gateway listener (and the bench's): routes inline
    (`route_config`) or by RDS from `rds_file`; `headers_timeout`:
    EXTAUTHZ_ENVOY_REQUEST_HEADERS_TIMEOUT."""
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
        # a client must send its headers in time (slowloris: 408), the whole request within 30 s
        request_headers_timeout=seconds(headers_timeout),
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
    return hcm_filter(manager)


def hcm_filter(manager: hcm.HttpConnectionManager) -> listener.Filter:
    """A connection manager as a listener's network filter."""
    return listener.Filter(
        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
    )


def plain_listener(
    name: str, port: int, manager: listener.Filter, buffer_limit: int | None = None
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
    return plain_listener("floor", port, hcm_filter(manager))
