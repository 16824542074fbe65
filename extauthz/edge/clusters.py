"""Clusters: extauthz's (ext_authz and ext_proc, HTTP/2) and the model server's, one per model
version without its own upstream, with circuit breakers and outlier detection."""

from __future__ import annotations

from extauthz.edge.catalog import Model
from extauthz.edge.proto import (
    cluster,
    core,
    endpoint,
    pack,
    seconds,
    socket_address,
    upstream_http,
)
from extauthz.edge.routes import MODEL_SERVER, version_cluster
from extauthz.settings import Settings


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
