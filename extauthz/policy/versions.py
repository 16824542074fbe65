"""The model catalog's versions and the operator's changes to them (`extauthz models ...`).

Pure functions over the catalog document (`rego/extauthz/catalog/data.json`, the data the
policy reads), each returning a new, validated catalog; then the two writes that apply one:
the file (atomically, under a lock) and OPA's data API. Never on the request path.

A versioned entry: "versions": {"v1": {"weight": 100}, "v2": {"weight": 0, "projects": [...],
"testers": [...], "retired": false}}, "stable": "v1", "previous": "". Weights are integers
0-100 totalling 100; `stable` is the version served when no eligible version has weight;
`previous` is the stable version before the last promote (what a rollback returns to).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Catalog = dict[str, Any]

VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as policy/opa.py accepts
# `lifted_projects`: the canary restriction a promote lifted, restored by a rollback of it
_FIELDS = {"weight", "projects", "testers", "retired", "upstream", "lifted_projects"}


class CatalogError(ValueError):
    """An operator's change that cannot be made (unknown model or version, bad weight, ...)."""


# ---- reading and checking


def versions_of(catalog: Catalog, model: str) -> dict[str, dict[str, Any]]:
    entry = catalog.get(model)
    if not isinstance(entry, dict):
        known = ", ".join(sorted(catalog)) or "none"
        raise CatalogError(f"unknown model {model!r} (models: {known})")
    versions = entry.get("versions")
    if not isinstance(versions, dict) or not versions:
        raise CatalogError(f"model {model!r} has no versions (it is served as one model)")
    return versions


def _version(catalog: Catalog, model: str, version: str) -> dict[str, Any]:
    versions = versions_of(catalog, model)
    if version not in versions:
        known = ", ".join(sorted(versions))
        raise CatalogError(f"model {model!r} has no version {version!r} (versions: {known})")
    return versions[version]


def validate(catalog: Catalog) -> None:
    """Every versioned entry as the policy expects it; CatalogError says what is wrong."""
    if not isinstance(catalog, dict):
        raise CatalogError("the catalog is not an object")
    for model, entry in catalog.items():
        if not isinstance(entry, dict) or "versions" not in entry:
            continue
        versions = entry["versions"]
        if not isinstance(versions, dict) or not versions:
            raise CatalogError(f"{model}: versions must be a non-empty object")
        total = 0
        for name, v in versions.items():
            where = f"{model} {name}"
            if not VERSION_NAME.match(name):
                raise CatalogError(f"{where}: not a version name ({VERSION_NAME.pattern})")
            if not isinstance(v, dict) or set(v) - _FIELDS:
                raise CatalogError(f"{where}: fields are {', '.join(sorted(_FIELDS))}")
            weight = v.get("weight")
            if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
                raise CatalogError(f"{where}: weight must be an integer 0-100")
            for field in ("projects", "testers", "lifted_projects"):
                names = v.get(field, [])
                if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                    raise CatalogError(f"{where}: {field} must be a list of names")
            if not isinstance(v.get("retired", False), bool):
                raise CatalogError(f"{where}: retired must be true or false")
            if v.get("retired") and weight:
                raise CatalogError(f"{where}: a retired version has weight 0")
            total += weight
        if total != 100:
            raise CatalogError(f"{model}: weights total {total}, not 100")
        stable = entry.get("stable")
        if stable not in versions or versions[stable].get("retired"):
            raise CatalogError(f"{model}: stable must name a live version")
        previous = entry.get("previous", "")
        if previous and previous not in versions:
            raise CatalogError(f"{model}: previous must name a version or be empty")


def weights(catalog: Catalog, model: str) -> dict[str, int]:
    return {name: int(v["weight"]) for name, v in sorted(versions_of(catalog, model).items())}


# ---- the operator's changes (each returns a new catalog)


def _share(total: int, among: dict[str, int]) -> dict[str, int]:
    """`total` split over `among` in proportion to their weights, as integers summing to
    `total`: floors first, then one each to the largest remainders (ties: by name)."""
    base = sum(among.values())
    exact = {name: total * w / base for name, w in among.items()}
    out = {name: int(x) for name, x in exact.items()}
    left = total - sum(out.values())
    for name in sorted(exact, key=lambda n: (-(exact[n] - out[n]), n))[:left]:
        out[name] += 1
    return out


def shift(catalog: Catalog, model: str, version: str, weight: int) -> Catalog:
    """`version` gets `weight`; the other versions share 100 - weight in proportion to their
    current weights. If they all stand at 0, the rest goes to the stable version (or, when
    `version` is the stable one, to the previous stable)."""
    if not 0 <= weight <= 100:
        raise CatalogError("weight must be 0-100")
    new = copy.deepcopy(catalog)
    target = _version(new, model, version)
    if target.get("retired"):
        raise CatalogError(f"{model} {version} is retired")
    versions = versions_of(new, model)
    others = {n: int(v["weight"]) for n, v in versions.items() if n != version}
    if weight < 100 and not sum(others.values()):
        entry = new[model]
        heir = entry["stable"] if entry["stable"] != version else entry.get("previous", "")
        if not heir or heir not in others or versions[heir].get("retired"):
            raise CatalogError(f"no other version of {model} can take the remaining {100 - weight}")
        others = {heir: 1}
    shares = _share(100 - weight, others) if weight < 100 else dict.fromkeys(others, 0)
    for name, v in versions.items():
        v["weight"] = weight if name == version else shares.get(name, 0)
    validate(new)
    return new


def promote(catalog: Catalog, model: str, version: str) -> Catalog:
    """`version` serves everyone: weight 100 (every other 0), stable; the old stable is
    remembered as previous. A canary's `projects` restriction is lifted (it is no longer a
    canary) and kept as `lifted_projects`, for a rollback to restore; its testers stay."""
    new = copy.deepcopy(catalog)
    target = _version(new, model, version)
    if target.get("retired"):
        raise CatalogError(f"{model} {version} is retired")
    entry = new[model]
    for name, v in entry["versions"].items():
        v["weight"] = 100 if name == version else 0
    lifted = target.pop("projects", None)
    if lifted is not None:
        target["lifted_projects"] = lifted
    if entry["stable"] != version:
        entry["previous"] = entry["stable"]
    entry["stable"] = version
    validate(new)
    return new


def rollback(catalog: Catalog, model: str) -> tuple[Catalog, str]:
    """A canary in progress (some version besides the stable one has weight): the stable
    version back at 100. Otherwise, after a promote: the previous stable back at 100, stable
    again (previous is then empty: one step back, not a toggle), and the version rolled back
    from is a canary again for the projects its promote lifted. Returns (catalog, version)."""
    new = copy.deepcopy(catalog)
    versions = versions_of(new, model)
    entry = new[model]
    canary = any(v["weight"] for n, v in versions.items() if n != entry["stable"])
    if canary:
        target = entry["stable"]
    else:
        target = entry.get("previous", "")
        if not target:
            raise CatalogError(f"nothing to roll back: {model} serves {entry['stable']} only")
        if versions[target].get("retired"):
            raise CatalogError(f"{model} {target} is retired")
        demoted = versions[entry["stable"]]
        if "lifted_projects" in demoted:  # only those projects may ask for it by name again
            demoted["projects"] = demoted.pop("lifted_projects")
        entry["stable"], entry["previous"] = target, ""
    for name, v in versions.items():
        v["weight"] = 100 if name == target else 0
    validate(new)
    return new, target


def add_version(
    catalog: Catalog,
    model: str,
    version: str,
    projects: tuple[str, ...] = (),
    testers: tuple[str, ...] = (),
) -> Catalog:
    """A new version at weight 0 (its route and cluster must exist before it gets weight)."""
    new = copy.deepcopy(catalog)
    versions = versions_of(new, model)
    if version in versions:
        raise CatalogError(f"{model} already has a version {version!r}")
    if not VERSION_NAME.match(version):
        raise CatalogError(f"not a version name: {version!r} ({VERSION_NAME.pattern})")
    entry: dict[str, Any] = {"weight": 0}
    if projects:
        entry["projects"] = list(projects)
    if testers:
        entry["testers"] = list(testers)
    versions[version] = entry
    validate(new)
    return new


def remove_version(catalog: Catalog, model: str, version: str) -> Catalog:
    """Drop a version that serves nobody: weight 0, neither stable nor previous."""
    new = copy.deepcopy(catalog)
    v = _version(new, model, version)
    entry = new[model]
    if v["weight"] or version in (entry["stable"], entry.get("previous", "")):
        raise CatalogError(
            f"{model} {version} still serves (weight {v['weight']}, stable {entry['stable']}, "
            f"previous {entry.get('previous') or '-'}): shift or roll back first"
        )
    del entry["versions"][version]
    validate(new)
    return new


# ---- applying a catalog


def catalog_file(policy_dir: Path) -> Path:
    return policy_dir / "extauthz" / "catalog" / "data.json"


def read_catalog(path: Path) -> Catalog:
    return json.loads(path.read_text())


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """One operator change at a time per catalog file (read, change, write, push)."""
    lock = path.with_name(f".{path.name}.lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def write_catalog(path: Path, catalog: Catalog) -> None:
    """Atomically (rename): OPA's file watch never sees half a file."""
    validate(catalog)
    data = (json.dumps(catalog, indent=2) + "\n").encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def push_to_opa(opa_url: str, catalog: Catalog, timeout: float = 5.0) -> None:
    """PUT the catalog into OPA's data (the file write reaches a watching OPA too, a little
    later; this makes it immediate) and read it back. OSError if OPA refuses or differs."""
    url = f"{opa_url.rstrip('/')}/v1/data/extauthz/catalog"
    body = json.dumps(catalog).encode()
    put = urllib.request.Request(url, body, {"content-type": "application/json"}, method="PUT")
    try:
        with urllib.request.urlopen(put, timeout=timeout) as resp:  # noqa: S310 - the configured OPA
            resp.read()
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            got = json.loads(resp.read()).get("result")
    except (urllib.error.URLError, ValueError) as exc:
        raise OSError(f"OPA at {opa_url}: {exc}") from exc
    if got != catalog:
        raise OSError(f"OPA at {opa_url} does not hold the catalog just written")
