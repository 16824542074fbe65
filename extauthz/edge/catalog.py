"""The model catalog as the gateway reads it: the policy's own data
(`<policy_dir>/extauthz/catalog/data.json`), so a model is routed exactly when the policy knows it.

Per entry the gateway uses:
    "edge": {"timeout_s": 5}        optional: per-model route settings (default: the settings')
    "versions": {"v1": {"weight": 100, "upstream": "<cluster>"}, ...}
                                    optional: one route and cluster per version (the rollout);
                                    `upstream` omitted: the model server
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# the names extauthz/request.py accepts in a model path; anything else cannot be routed safely
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class CatalogError(ValueError):
    """The catalog cannot be turned into a gateway configuration."""


@dataclass(frozen=True)
class Version:
    name: str
    weight: int = 0
    upstream: str = ""  # a cluster name; "" = the model server


@dataclass(frozen=True)
class Model:
    name: str
    timeout_s: float | None = None  # None: settings.envoy_route_timeout
    versions: tuple[Version, ...] = ()


def catalog_file(policy_dir: Path) -> Path:
    return policy_dir / "extauthz" / "catalog" / "data.json"


def parse_catalog(doc: dict[str, object]) -> tuple[Model, ...]:
    """Typed entries, sorted by name; raises CatalogError on a name or value the routes could
    not carry safely."""
    models = []
    for name, entry in sorted(doc.items()):
        if not _NAME.fullmatch(name) or not isinstance(entry, dict):
            raise CatalogError(f"catalog entry {name!r}: not a routable model name")
        edge = entry.get("edge") or {}
        timeout = edge.get("timeout_s")
        if timeout is not None and not (isinstance(timeout, int | float) and 0 < timeout <= 3600):
            raise CatalogError(f"catalog entry {name!r}: edge.timeout_s must be in (0, 3600]")
        versions = []
        for vname, v in sorted((entry.get("versions") or {}).items()):
            if not _NAME.fullmatch(vname) or not isinstance(v, dict):
                raise CatalogError(f"catalog entry {name!r}: bad version {vname!r}")
            weight, upstream = v.get("weight", 0), v.get("upstream", "")
            if not isinstance(weight, int) or not 0 <= weight <= 100:
                raise CatalogError(f"{name} {vname}: weight must be an integer in [0, 100]")
            if not isinstance(upstream, str) or (upstream and not _NAME.fullmatch(upstream)):
                raise CatalogError(f"{name} {vname}: upstream must be a cluster name")
            versions.append(Version(vname, weight, upstream))
        models.append(Model(name, float(timeout) if timeout else None, tuple(versions)))
    return tuple(models)


def load_catalog(policy_dir: Path) -> tuple[Model, ...]:
    return parse_catalog(json.loads(catalog_file(policy_dir).read_text()))
