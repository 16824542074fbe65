"""The bootstrap: listeners, extauthz's clusters, the overload manager; routes and model clusters
inline or from the RDS/CDS files (render.py writes them). The generator's parts, each typed with
envoy-data-plane's classes (a wrong field name or type fails in Python, before Envoy sees it);
pure, no file is read or written here:

    proto.py      the classes, imported once, and shared helpers (`to_dict`: Envoy's JSON)
    filters.py    the HTTP filters, local replies, access log
    routes.py     the catalog's routes (`model_routes`, one function per model)
    clusters.py   extauthz's and the model clusters (breakers, outlier detection)
    listeners.py  the one connection manager, plain/TLS/mTLS/floor listeners, TLS parameters

Why each setting is what it is: the comment beside it (README, "The edge", for the hardening).
"""

from __future__ import annotations

from dataclasses import dataclass

from extauthz.edge.catalog import Model
from extauthz.edge.clusters import model_clusters, service_clusters
from extauthz.edge.filters import inference_filters
from extauthz.edge.listeners import (
    Files,
    connection_manager,
    floor_listener,
    plain_listener,
    tls_listener,
)
from extauthz.edge.proto import (
    bootstrap,
    config_source,
    core,
    downstream_connections,
    fixed_heap,
    listener,
    overload,
    pack,
    seconds,
    socket_address,
)
from extauthz.edge.routes import route_configuration
from extauthz.settings import Settings


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
            prefix,
            filters,
            files.access_log,
            route_config=routes,
            rds_file=rds,
            headers_timeout=s.envoy_request_headers_timeout,
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
