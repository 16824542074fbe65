"""Envoy's configuration, generated: typed messages (envoy-data-plane) built from the settings
and the model catalog, written as JSON files Envoy reads. Off the request path: the service never
imports this package; the dev stack, the CLI (`extauthz envoy render`) and the benchmarks do.

    catalog.py  the catalog entries the gateway needs (routes, versions, per-model settings)
    build.py    the typed builder: listeners, connection manager, routes, clusters, bootstrap
    render.py   files: the bootstrap, and the RDS/CDS/SDS files Envoy watches (atomic renames)
"""
