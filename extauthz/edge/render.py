"""Envoy's configuration as files: the bootstrap, and the dynamic resources Envoy watches.

    <dir>/bootstrap.json        listeners, extauthz's clusters, overload manager (read at start)
    <dir>/xds/rds/routes.json   RDS: the `inference` routes        (reloaded on rename)
    <dir>/xds/cds/clusters.json CDS: the model clusters             (reloaded on rename)
    <dir>/sds/secret.json       SDS: the listeners' certificate     (reloaded on rename)

Every file is replaced by a rename within its directory (Envoy watches the directory for moves),
so Envoy never reads half a file, and a change needs neither a restart nor a drain: RDS swaps
routes for new requests while in-flight ones finish on the old; CDS adds clusters before routes
name them, and removes them only when asked (`prune=True`), after routes stopped naming them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from extauthz.edge import build, clusters, listeners, proto, routes
from extauthz.edge.catalog import Model
from extauthz.settings import Settings

_ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
_CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"  # noqa: S105


def layout(config_dir: Path, files: listeners.Files) -> listeners.Files:
    """`files` with the dynamic resources under `config_dir`."""
    return listeners.Files(
        access_log=files.access_log,
        server_cert=files.server_cert,
        server_key=files.server_key,
        client_ca=files.client_ca,
        xds_dir=config_dir / "xds",
        tls_secret=config_dir / "sds" / "secret.json",
    )


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False) + "\n"


def atomic_write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write `path` whole, by a rename in its own directory (what Envoy's watch reacts to)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def discovery_response(type_url: str, resources: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A file-based xDS document: the resources and a version that changes with them."""
    items = [{"@type": type_url, **r} for r in resources]
    version = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()[:16]
    return {"version_info": version, "resources": items}


def _resources(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text())["resources"]
    except (OSError, ValueError, KeyError):
        return []


def _envoy_clusters(admin_url: str) -> set[str]:
    with urllib.request.urlopen(f"{admin_url}/clusters?format=json", timeout=2) as resp:
        doc = json.loads(resp.read())
    return {c["name"] for c in doc.get("cluster_statuses", [])}


def write_dynamic(
    s: Settings,
    models: tuple[Model, ...],
    xds_dir: Path,
    *,
    shaping: bool = True,
    prune: bool = False,
    admin_url: str = "",
    timeout: float = 10.0,
) -> None:
    """Rewrite the RDS and CDS files for `models` (the rollout's one call).

    Clusters first, routes second, so no route names a cluster Envoy lacks. With `admin_url`,
    wait until Envoy reports every new cluster before the routes change (raises TimeoutError).
    Clusters the previous file had and `models` no longer name stay (in-flight requests may
    still use them) unless `prune`: call again with `prune=True` once the routes moved away."""
    files = listeners.Files(Path(), Path(), Path(), Path(), xds_dir=xds_dir)
    wanted = {c.name: proto.to_dict(c) for c in clusters.model_clusters(s, models)}
    if not prune:
        for old in _resources(files.cds_file):
            wanted.setdefault(old.get("name", ""), {k: v for k, v in old.items() if k != "@type"})
    atomic_write(files.cds_file, dumps(discovery_response(_CLUSTER_TYPE, wanted.values())))
    if admin_url:
        deadline = time.monotonic() + timeout
        while not set(wanted) <= _envoy_clusters(admin_url):
            if time.monotonic() > deadline:
                raise TimeoutError(f"Envoy did not load clusters {sorted(wanted)}")
            time.sleep(0.05)
    config = routes.route_configuration(s, models, shaping=shaping)
    atomic_write(files.rds_file, dumps(discovery_response(_ROUTE_TYPE, [proto.to_dict(config)])))


def write_tls_secret(secret_file: Path, cert_pem: bytes, key_pem: bytes) -> Path:
    """Deliver a certificate to the TLS listeners by SDS: the PEM files beside the secret file
    (named by their digest; the key 0600), then the secret naming them. Envoy loads it without a
    restart; connections already open keep the certificate they were made with. Returns the
    certificate file."""
    core, tls = proto.core, proto.tls
    directory = secret_file.parent
    tag = hashlib.sha256(cert_pem).hexdigest()[:12]
    cert_file, key_file = directory / f"server-{tag}.pem", directory / f"server-{tag}.key"
    atomic_write(cert_file, cert_pem.decode())
    atomic_write(key_file, key_pem.decode(), mode=0o600)
    previous = {p for r in _resources(secret_file) for p in _secret_paths(r)}
    secret = tls.Secret(
        name=listeners.TLS_SECRET,
        tls_certificate=tls.TlsCertificate(
            certificate_chain=core.DataSource(filename=str(cert_file)),
            private_key=core.DataSource(filename=str(key_file)),
        ),
    )
    atomic_write(secret_file, dumps(discovery_response(_SECRET_TYPE, [proto.to_dict(secret)])))
    keep = previous | {str(cert_file), str(key_file)}  # the previous pair may still be loading
    for old in directory.glob("server-*"):
        if str(old) not in keep:
            old.unlink(missing_ok=True)
    return cert_file


def _secret_paths(resource: dict[str, Any]) -> list[str]:
    cert = resource.get("tls_certificate", {})
    return [cert.get(k, {}).get("filename", "") for k in ("certificate_chain", "private_key")]


def write_gateway(
    s: Settings,
    config_dir: Path,
    files: listeners.Files,
    ports: build.Ports,
    models: tuple[Model, ...],
    *,
    shaping: bool = True,
) -> Path:
    """Every file of a gateway Envoy under `config_dir`; returns the bootstrap's path. The
    certificate is (re)delivered from `files.server_cert`/`server_key`."""
    files = layout(config_dir, files)
    assert files.xds_dir is not None and files.tls_secret is not None
    write_tls_secret(
        files.tls_secret, files.server_cert.read_bytes(), files.server_key.read_bytes()
    )
    write_dynamic(s, models, files.xds_dir, shaping=shaping, prune=True)
    path = config_dir / "bootstrap.json"
    boot = build.gateway_bootstrap(s, models, files, ports, shaping=shaping)
    atomic_write(path, dumps(proto.to_dict(boot)))
    return path


def write_static(
    s: Settings,
    path: Path,
    files: listeners.Files,
    ports: build.Ports,
    models: tuple[Model, ...],
    *,
    shaping: bool = True,
) -> Path:
    """One self-contained file: routes, clusters and certificates inline (what `envoy --mode
    validate` can check whole; what `extauthz envoy render --static` prints)."""
    boot = build.gateway_bootstrap(s, models, files, ports, shaping=shaping)
    atomic_write(path, dumps(proto.to_dict(boot)))
    return path


def gateway_documents(
    s: Settings,
    config_dir: Path,
    files: listeners.Files,
    ports: build.Ports,
    models: tuple[Model, ...],
) -> dict[str, dict[str, Any]]:
    """What `write_gateway` would write under `config_dir` (bootstrap, RDS, CDS), written
    nowhere: `extauthz envoy render` prints it without touching a running stack's files."""
    files = layout(config_dir, files)
    assert files.xds_dir is not None
    config = routes.route_configuration(s, models)
    return {
        str(config_dir / "bootstrap.json"): proto.to_dict(
            build.gateway_bootstrap(s, models, files, ports)
        ),
        str(files.rds_file): discovery_response(_ROUTE_TYPE, [proto.to_dict(config)]),
        str(files.cds_file): discovery_response(
            _CLUSTER_TYPE, [proto.to_dict(c) for c in clusters.model_clusters(s, models)]
        ),
    }


def validate(config: Path, envoy: str) -> tuple[bool, str]:
    """`envoy --mode validate` on `config`: (accepted, Envoy's words)."""
    import subprocess

    out = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return out.returncode == 0, (out.stdout + out.stderr).strip()
