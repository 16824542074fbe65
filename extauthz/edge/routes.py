"""The `inference` routes from the model catalog: one set per model (`model_routes`, the one
function a per-model setting or a rollout extends), then the default route."""

from __future__ import annotations

import copy
import re
from typing import Any

from extauthz.edge.catalog import Model, Version
from extauthz.edge.filters import processing_mode
from extauthz.edge.proto import (
    PbAny,
    core,
    ext_proc,
    matcher,
    pack,
    route,
    seconds,
)
from extauthz.settings import Settings

# The header extauthz sets on an allow for a model with versions (the version it chose for this
# caller); clients cannot set it (extauthz strips client-sent x-extauthz-* headers).
VERSION_HEADER = "x-extauthz-model-version"
MODEL_SERVER = "model_server"
ROUTE_CONFIG = "inference"


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
                overrides=ext_proc.ExtProcOverrides(processing_mode=processing_mode(response=True))
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


def direct_response_routes(
    name: str, body: str, headers: dict[str, str] | None = None
) -> route.RouteConfiguration:
    """One route answering 200 with `body` itself (the bench's sink and TLS-alone Envoys)."""
    return route.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route.VirtualHost(
                name=name,
                domains=["*"],
                routes=[
                    route.Route(
                        match=route.RouteMatch(prefix="/"),
                        direct_response=route.DirectResponseAction(
                            status=200, body=core.DataSource(inline_string=body)
                        ),
                        response_headers_to_add=[
                            core.HeaderValueOption(header=core.HeaderValue(key=k, value=v))
                            for k, v in (headers or {}).items()
                        ],
                    )
                ],
            )
        ],
    )
