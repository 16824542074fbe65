"""The bench Envoy: one listener per path, identical except for the guard.

Every listener has the HTTP connection manager of the `inference` listener in
envoy/envoy.yaml.in (path normalisation, header limit, request ids, access log, the generic
local replies) and the same two routes; only `http_filters` differ:

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

Built as a dict and written as JSON (Envoy reads either), so "differs only in the guard" holds
by construction. If envoy.yaml.in's listener changes, change `_hcm` here to match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SINK_HEADER = "x-bench-sink"
SINK_BODY = '{"model_name":"digits","outputs":[]}'
_T = "type.googleapis.com/envoy.extensions."
_HCM = _T + "filters.network.http_connection_manager.v3.HttpConnectionManager"


def _mapper(code: int, body: str, op: str = "EQ", **extra: Any) -> dict[str, Any]:
    return {
        "filter": {
            "status_code_filter": {
                "comparison": {
                    "op": op,
                    "value": {"default_value": code, "runtime_key": f"_unused_{op}_{code}"},
                }
            }
        },
        **extra,
        "body_format_override": {
            "text_format_source": {"inline_string": body},
            "content_type": "application/json",
        },
    }


def _local_reply_config() -> dict[str, Any]:
    """envoy.yaml.in's mappers: extauthz's denials (UAEX) untouched, the rest generic."""
    uaex = {"response_flag_filter": {"flags": ["UAEX"]}}
    return {
        "mappers": [
            {
                "filter": {
                    "and_filter": {
                        "filters": [
                            uaex,
                            _mapper(503, "")["filter"],
                        ]
                    }
                },
                "body_format_override": {
                    "text_format_source": {"inline_string": '{"error":"unavailable"}'},
                    "content_type": "application/json",
                },
            },
            {"filter": uaex},
            _mapper(401, '{"error":"unauthenticated"}'),
            _mapper(403, '{"error":"forbidden"}'),
            _mapper(404, '{"error":"not_found"}'),
            _mapper(413, '{"error":"payload_too_large"}'),
            _mapper(431, '{"error":"headers_too_large"}'),
            _mapper(429, '{"error":"rate_limited"}'),
            _mapper(500, '{"error":"unavailable"}', op="GE", status_code=503),
            _mapper(400, '{"error":"bad_request"}', op="GE"),
        ]
    }


def _ext_authz(cluster: str, max_body_bytes: int) -> dict[str, Any]:
    """envoy.yaml.in's ext_authz filter, pointed at `cluster`."""
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "1s"},
            "failure_mode_allow": False,
            "status_on_error": {"code": "ServiceUnavailable"},
            "with_request_body": {
                "max_request_bytes": max_body_bytes,
                "allow_partial_message": False,
                "pack_as_bytes": True,
            },
            "include_peer_certificate": True,
        },
    }


def _ratelimit(cluster: str) -> dict[str, Any]:
    from bench.procs import RATELIMIT_DOMAIN

    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": RATELIMIT_DOMAIN,
            "failure_mode_deny": True,  # fail closed, like extauthz
            "timeout": "1s",
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": cluster}},
                "transport_api_version": "V3",
            },
        },
    }


def _native(jwks_file: Path, issuer: str, audience: str) -> list[dict[str, Any]]:
    """Path E's filters: Envoy's own JWT verification, RBAC and a local token bucket."""
    jwt_meta = {"filter": "envoy.filters.http.jwt_authn", "path": [{"key": "jwt_payload"}]}

    def claim_has(claim: str, value: str) -> dict[str, Any]:
        path = [*jwt_meta["path"], {"key": claim}]
        match = {"list_match": {"one_of": {"string_match": {"exact": value}}}}
        return {"metadata": {"filter": jwt_meta["filter"], "path": path, "value": match}}

    return [
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": _T + "filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    "dev": {
                        "issuer": issuer,
                        "audiences": [audience],
                        "local_jwks": {"filename": str(jwks_file)},
                        "payload_in_metadata": "jwt_payload",
                        "forward": False,
                    }
                },
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "dev"}}],
            },
        },
        {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": _T + "filters.http.rbac.v3.RBAC",
                "rules": {
                    "action": "ALLOW",
                    "policies": {
                        "analyst-vision-infer": {
                            "permissions": [
                                {
                                    "and_rules": {
                                        "rules": [
                                            {
                                                "header": {
                                                    "name": ":method",
                                                    "string_match": {"exact": "POST"},
                                                }
                                            },
                                            {
                                                "url_path": {
                                                    "path": {"exact": "/v2/models/digits/infer"}
                                                }
                                            },
                                        ]
                                    }
                                }
                            ],
                            "principals": [
                                {
                                    "and_ids": {
                                        "ids": [
                                            claim_has("roles", "analyst"),
                                            claim_has("projects", "vision"),
                                        ]
                                    }
                                }
                            ],
                        }
                    },
                },
            },
        },
        {
            "name": "envoy.filters.http.local_ratelimit",
            "typed_config": {
                "@type": _T + "filters.http.local_ratelimit.v3.LocalRateLimit",
                "stat_prefix": "bench_e",
                "token_bucket": {
                    "max_tokens": 10_000_000,
                    "tokens_per_fill": 10_000_000,
                    "fill_interval": "60s",
                },
                "filter_enabled": {
                    "runtime_key": "bench_e_rl_enabled",
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                },
                "filter_enforced": {
                    "runtime_key": "bench_e_rl_enforced",
                    "default_value": {"numerator": 100, "denominator": "HUNDRED"},
                },
            },
        },
    ]


_ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}


def _routes(model_path: str) -> list[dict[str, Any]]:
    return [
        {
            "match": {
                "path": model_path,
                "headers": [{"name": SINK_HEADER, "present_match": True}],
            },
            "route": {"cluster": "sink", "timeout": "15s"},
        },
        {"match": {"prefix": "/"}, "route": {"cluster": "model_server", "timeout": "15s"}},
    ]


def _sink_listener(port: int) -> dict[str, Any]:
    """The `sink` upstream: 200 with a fixed small JSON body, nothing else."""
    hcm = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": "bench_sink",
            "route_config": {
                "name": "sink",
                "virtual_hosts": [
                    {
                        "name": "sink",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "direct_response": {
                                    "status": 200,
                                    "body": {"inline_string": SINK_BODY},
                                },
                                "response_headers_to_add": [
                                    {
                                        "header": {
                                            "key": "content-type",
                                            "value": "application/json",
                                        }
                                    }
                                ],
                            }
                        ],
                    }
                ],
            },
            "http_filters": [_ROUTER],
        },
    }
    return {
        "name": "bench_sink",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm]}],
    }


def _hcm(name: str, filters: list[dict[str, Any]], access_log: Path, rate_limited: bool) -> dict:
    """envoy.yaml.in's `inference` connection manager with the given http_filters."""
    vhost: dict[str, Any] = {
        "name": "models",
        "domains": ["*"],
        "routes": _routes("/v2/models/digits/infer"),
    }
    if rate_limited:
        # one descriptor per key id (set by the peer authz on allow): a per-key quota, like ours
        vhost["rate_limits"] = [
            {
                "actions": [
                    {
                        "request_headers": {
                            "header_name": "x-extauthz-key-id",
                            "descriptor_key": "key_id",
                        }
                    }
                ]
            }
        ]
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": f"bench_{name}",
            "normalize_path": True,
            "merge_slashes": True,
            "path_with_escaped_slashes_action": "REJECT_REQUEST",
            "max_request_headers_kb": 32,
            "request_timeout": "30s",
            "server_header_transformation": "PASS_THROUGH",
            "server_name": "gateway",
            "use_remote_address": True,
            "always_set_request_id_in_response": True,
            "access_log": [
                {
                    "name": "envoy.access_loggers.file",
                    "typed_config": {
                        "@type": _T + "access_loggers.file.v3.FileAccessLog",
                        "path": str(access_log),
                        "log_format": {
                            "json_format": {
                                "time": "%START_TIME%",
                                "method": "%REQ(:METHOD)%",
                                "path": "%REQ(:PATH)%",
                                "status": "%RESPONSE_CODE%",
                                "flags": "%RESPONSE_FLAGS%",
                                "details": "%RESPONSE_CODE_DETAILS%",
                                "duration_ms": "%DURATION%",
                                "upstream": "%UPSTREAM_HOST%",
                                "request_id": "%REQ(X-REQUEST-ID)%",
                            }
                        },
                    },
                }
            ],
            "local_reply_config": _local_reply_config(),
            "route_config": {"name": f"bench_{name}", "virtual_hosts": [vhost]},
            "http_filters": [*filters, _ROUTER],
        },
    }


def _cluster(name: str, port: int, h2: bool, connect_timeout: str = "0.25s") -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": "127.0.0.1", "port_value": port}
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }
    if h2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return cluster


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
    guards: dict[str, list[dict[str, Any]]] = {
        "A": [],
        "B": [_ext_authz("trivial_authz", max_body_bytes)],
        "C": [_ext_authz("extauthz", max_body_bytes)],
    }
    clusters = [
        _cluster("model_server", model_port, h2=False, connect_timeout="0.5s"),
        _cluster("sink", sink_port, h2=False),
        _cluster("extauthz", extauthz_port, h2=True),
        _cluster("trivial_authz", trivial_port, h2=True),
    ]
    if peer_port is not None:
        guards["D"] = [_ext_authz("peer_authz", max_body_bytes)]
        clusters.append(_cluster("peer_authz", peer_port, h2=True))
        if ratelimit_port is not None:
            guards["D"].append(_ratelimit("ratelimit"))
            clusters.append(_cluster("ratelimit", ratelimit_port, h2=True))
    if native_jwt is not None:
        guards["E"] = _native(*native_jwt)
    out_listeners = [_sink_listener(sink_port)]
    for name, port in listeners.items():
        hcm = _hcm(
            name,
            guards[name],
            access_log_dir / f"envoy-bench-{name}.log",
            rate_limited=name == "D" and ratelimit_port is not None,
        )
        out_listeners.append(
            {
                "name": f"bench_{name}",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "per_connection_buffer_limit_bytes": 1048576,
                "filter_chains": [{"filters": [hcm]}],
            }
        )
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {"listeners": out_listeners, "clusters": clusters},
    }
