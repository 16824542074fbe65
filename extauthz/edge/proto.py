"""envoy-data-plane's classes for every Envoy type the generator uses, imported once (quietly:
see below), and the small helpers every part of the generator shares."""

from __future__ import annotations

import datetime
import warnings
from pathlib import Path
from typing import Any

import betterproto2
from pydantic.warnings import PydanticDeprecatedSince212

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

__all__ = [
    "accesslog",
    "bootstrap",
    "cluster",
    "core",
    "endpoint",
    "listener",
    "overload",
    "route",
    "file_log",
    "custom_response",
    "ext_authz",
    "ext_proc",
    "router",
    "hcm",
    "local_response",
    "downstream_connections",
    "fixed_heap",
    "tls",
    "upstream_http",
    "envoy_type",
    "matcher",
    "PbAny",
    "Struct",
    "xds_core",
    "xds_matcher",
    "seconds",
    "pack",
    "to_dict",
    "config_source",
    "socket_address",
]


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


def socket_address(port: int) -> core.Address:
    return core.Address(socket_address=core.SocketAddress(address="127.0.0.1", port_value=port))
