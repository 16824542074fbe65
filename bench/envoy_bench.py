"""The bench Envoy: one listener per path, identical except for the guard.

Every listener has the gateway's own HTTP connection manager (`extauthz.edge.listeners.
connection_manager`: path normalisation, header limits, timeouts, request ids, access log, the
generic local replies) with the same two routes; only `http_filters` differ:

    A  router only                                   (the floor: no ext_authz)
    B  ext_authz → bench/trivial_authz.py → router   (the Python gRPC floor)
    C  ext_authz → extauthz → router                 (the full decision)
    D  ext_authz → Go OPA peer, ratelimit → envoyproxy/ratelimit → router
    E  jwt_authn → rbac → local_ratelimit → router   (Envoy's own C++ filters, no external hop)

E is the nearest decision Envoy makes alone: the dev issuer's JWT verified against a local JWKS
(issuer, audience, expiry), RBAC on the token's roles and projects and on the method and path
(an analyst of project vision may POST to digits), and a token bucket of the `bench` tier's size.
It has no API keys, revocation, device binding, per-credential windows or decision log: it is
the floor of what a C++ in-process decision costs, not an equivalent of C.

Routes: POST /v2/models/digits/infer goes to MLServer (the `model` route); the same request with
an `x-bench-sink` header goes to the `sink` route: an upstream that is another listener of the
same Envoy answering 200 with a direct response, so the guard is the only work beyond Envoy
itself. (A direct_response on the guarded route would skip Envoy's rate-limit filter, which only
acts on routes with an upstream, and so would flatter peer D.)

Built from the gateway's typed builder (extauthz/edge/) with bench options, so "differs
only in the guard" and "the gateway's connection manager" hold by construction.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from pydantic.warnings import PydanticDeprecatedSince212

from extauthz.edge.clusters import static_cluster
from extauthz.edge.filters import ext_authz_filter, router_filter
from extauthz.edge.listeners import connection_manager, hcm_filter, plain_listener
from extauthz.edge.proto import (
    bootstrap,
    core,
    envoy_type,
    hcm,
    listener,
    matcher,
    pack,
    route,
    seconds,
    socket_address,
    to_dict,
)
from extauthz.edge.routes import MODEL_SERVER, direct_response_routes

with warnings.catch_warnings():  # see extauthz/edge/proto.py
    warnings.simplefilter("ignore", PydanticDeprecatedSince212)
    from envoy_data_plane.envoy.config.ratelimit import v3 as ratelimit_config
    from envoy_data_plane.envoy.config.rbac import v3 as rbac
    from envoy_data_plane.envoy.extensions.filters.http.jwt_authn import v3 as jwt_authn
    from envoy_data_plane.envoy.extensions.filters.http.local_ratelimit import v3 as local_rl
    from envoy_data_plane.envoy.extensions.filters.http.ratelimit import v3 as ratelimit
    from envoy_data_plane.envoy.extensions.filters.http.rbac import v3 as rbac_filter

SINK_HEADER = "x-bench-sink"
RATELIMIT_DOMAIN = "extauthz-bench"  # the descriptor domain of the ratelimit peer (D)
SINK_BODY = '{"model_name":"digits","outputs":[]}'
MODEL_PATH = "/v2/models/digits/infer"


def _ext_authz(cluster: str, max_body_bytes: int) -> hcm.HttpFilter:
    """The gateway's ext_authz filter, pointed at `cluster` (one route per listener: no route
    re-selection after it)."""
    return ext_authz_filter(cluster, max_body_bytes, clear_route_cache=False)


def _ratelimit(cluster: str) -> hcm.HttpFilter:
    return hcm.HttpFilter(
        name="envoy.filters.http.ratelimit",
        typed_config=pack(
            ratelimit.RateLimit(
                domain=RATELIMIT_DOMAIN,
                failure_mode_deny=True,  # fail closed, like extauthz
                timeout=seconds(1),
                enable_x_ratelimit_headers=ratelimit.RateLimitXRateLimitHeadersRfcVersion.DRAFT_VERSION_03,
                rate_limit_service=ratelimit_config.RateLimitServiceConfig(
                    grpc_service=core.GrpcService(
                        envoy_grpc=core.GrpcServiceEnvoyGrpc(cluster_name=cluster)
                    ),
                    transport_api_version=core.ApiVersion.V3,
                ),
            )
        ),
    )


def _native(jwks_file: Path, issuer: str, audience: str) -> list[hcm.HttpFilter]:
    """Path E's filters: Envoy's own JWT verification, RBAC and a local token bucket."""
    jwt_filter = "envoy.filters.http.jwt_authn"

    def claim_has(claim: str, value: str) -> rbac.Principal:
        # (`metadata` is deprecated for `sourced_metadata`, the same matcher)
        return rbac.Principal(
            sourced_metadata=rbac.SourcedMetadata(
                metadata_matcher=matcher.MetadataMatcher(
                    filter=jwt_filter,
                    path=[
                        matcher.MetadataMatcherPathSegment(key="jwt_payload"),
                        matcher.MetadataMatcherPathSegment(key=claim),
                    ],
                    value=matcher.ValueMatcher(
                        list_match=matcher.ListMatcher(
                            one_of=matcher.ValueMatcher(
                                string_match=matcher.StringMatcher(exact=value)
                            )
                        )
                    ),
                )
            )
        )

    percent = core.RuntimeFractionalPercent
    hundred = envoy_type.FractionalPercent(
        numerator=100, denominator=envoy_type.FractionalPercentDenominatorType.HUNDRED
    )
    return [
        hcm.HttpFilter(
            name=jwt_filter,
            typed_config=pack(
                jwt_authn.JwtAuthentication(
                    providers={
                        "dev": jwt_authn.JwtProvider(
                            issuer=issuer,
                            audiences=[audience],
                            local_jwks=core.DataSource(filename=str(jwks_file)),
                            payload_in_metadata="jwt_payload",
                            forward=False,
                        )
                    },
                    rules=[
                        jwt_authn.RequirementRule(
                            match=route.RouteMatch(prefix="/"),
                            requires=jwt_authn.JwtRequirement(provider_name="dev"),
                        )
                    ],
                )
            ),
        ),
        hcm.HttpFilter(
            name="envoy.filters.http.rbac",
            typed_config=pack(
                rbac_filter.Rbac(
                    rules=rbac.Rbac(
                        action=rbac.RbacAction.ALLOW,
                        policies={
                            "analyst-vision-infer": rbac.Policy(
                                permissions=[
                                    rbac.Permission(
                                        and_rules=rbac.PermissionSet(
                                            rules=[
                                                rbac.Permission(
                                                    header=route.HeaderMatcher(
                                                        name=":method",
                                                        string_match=matcher.StringMatcher(
                                                            exact="POST"
                                                        ),
                                                    )
                                                ),
                                                rbac.Permission(
                                                    url_path=matcher.PathMatcher(
                                                        path=matcher.StringMatcher(exact=MODEL_PATH)
                                                    )
                                                ),
                                            ]
                                        )
                                    )
                                ],
                                principals=[
                                    rbac.Principal(
                                        and_ids=rbac.PrincipalSet(
                                            ids=[
                                                claim_has("roles", "analyst"),
                                                claim_has("projects", "vision"),
                                            ]
                                        )
                                    )
                                ],
                            )
                        },
                    )
                )
            ),
        ),
        hcm.HttpFilter(
            name="envoy.filters.http.local_ratelimit",
            typed_config=pack(
                local_rl.LocalRateLimit(
                    stat_prefix="bench_e",
                    token_bucket=envoy_type.TokenBucket(
                        max_tokens=10_000_000, tokens_per_fill=10_000_000, fill_interval=seconds(60)
                    ),
                    filter_enabled=percent(runtime_key="bench_e_rl_enabled", default_value=hundred),
                    filter_enforced=percent(
                        runtime_key="bench_e_rl_enforced", default_value=hundred
                    ),
                )
            ),
        ),
    ]


def _routes(name: str, *, rate_limited: bool) -> route.RouteConfiguration:
    vhost = route.VirtualHost(
        name="models",
        domains=["*"],
        routes=[
            route.Route(
                match=route.RouteMatch(
                    path=MODEL_PATH,
                    headers=[route.HeaderMatcher(name=SINK_HEADER, present_match=True)],
                ),
                route=route.RouteAction(cluster="sink", timeout=seconds(15)),
            ),
            route.Route(
                match=route.RouteMatch(prefix="/"),
                route=route.RouteAction(cluster=MODEL_SERVER, timeout=seconds(15)),
            ),
        ],
    )
    if rate_limited:
        # one descriptor per key id (set by the peer authz on allow): a per-key quota, like ours
        vhost.rate_limits = [
            route.RateLimit(
                actions=[
                    route.RateLimitAction(
                        request_headers=route.RateLimitActionRequestHeaders(
                            header_name="x-extauthz-key-id", descriptor_key="key_id"
                        )
                    )
                ]
            )
        ]
    return route.RouteConfiguration(name=f"bench_{name}", virtual_hosts=[vhost])


def _sink_listener(port: int) -> listener.Listener:
    """The `sink` upstream: 200 with a fixed small JSON body, nothing else."""
    manager = hcm.HttpConnectionManager(
        stat_prefix="bench_sink",
        route_config=direct_response_routes(
            "sink", SINK_BODY, {"content-type": "application/json"}
        ),
        http_filters=[router_filter()],
    )
    return plain_listener("bench_sink", port, hcm_filter(manager))


def bench_config(
    *,
    listeners: dict[str, int],
    sink_port: int,
    admin_port: int,
    model_port: int,
    extauthz_port: int,
    trivial_port: int,
    peer_port: int | None,
    ratelimit_port: int | None,
    max_body_bytes: int,
    access_log_dir: Path,
    native_jwt: tuple[Path, str, str] | None = None,
) -> dict[str, Any]:
    """`native_jwt` (JWKS file, issuer, audience) enables path E."""
    guards: dict[str, list[hcm.HttpFilter]] = {
        "A": [],
        "B": [_ext_authz("trivial_authz", max_body_bytes)],
        "C": [_ext_authz("extauthz", max_body_bytes)],
    }
    clusters = [
        static_cluster(MODEL_SERVER, model_port, h2=False, connect_timeout=0.5),
        static_cluster("sink", sink_port, h2=False),
        static_cluster("extauthz", extauthz_port, h2=True),
        static_cluster("trivial_authz", trivial_port, h2=True),
    ]
    if peer_port is not None:
        guards["D"] = [_ext_authz("peer_authz", max_body_bytes)]
        clusters.append(static_cluster("peer_authz", peer_port, h2=True))
        if ratelimit_port is not None:
            guards["D"].append(_ratelimit("ratelimit"))
            clusters.append(static_cluster("ratelimit", ratelimit_port, h2=True))
    if native_jwt is not None:
        guards["E"] = _native(*native_jwt)
    out_listeners = [_sink_listener(sink_port)]
    for name, port in listeners.items():
        manager = connection_manager(
            f"bench_{name}",
            [*guards[name], router_filter()],
            access_log_dir / f"envoy-bench-{name}.log",
            route_config=_routes(name, rate_limited=name == "D" and ratelimit_port is not None),
        )
        out_listeners.append(plain_listener(f"bench_{name}", port, manager, 1048576))
    config = bootstrap.Bootstrap(
        admin=bootstrap.Admin(address=socket_address(admin_port)),
        static_resources=bootstrap.BootstrapStaticResources(
            listeners=out_listeners, clusters=clusters
        ),
    )
    return to_dict(config)
