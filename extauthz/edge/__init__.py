"""Envoy's configuration, generated: typed messages (envoy-data-plane) built from the settings
and the model catalog, written as JSON files Envoy reads. Off the request path: the service never
imports this package; the dev stack, the CLI (`extauthz envoy render`) and the benchmarks do.

    catalog.py    the catalog entries the gateway needs (routes, versions, per-model settings)
    proto.py      envoy-data-plane's classes, imported once; `to_dict` (Envoy's JSON)
    filters.py    the HTTP filters, generic local replies, access log
    routes.py     per-model routes (`model_routes`), versions by header, the default route
    clusters.py   extauthz's clusters and the model clusters (breakers, outlier detection)
    listeners.py  the one connection manager; plain, TLS, mTLS, floor listeners; TLS and SDS
    build.py      the bootstrap (overload manager, listeners, clusters, dynamic resources)
    render.py     files: the bootstrap, and the RDS/CDS/SDS files Envoy watches (atomic renames)
"""
