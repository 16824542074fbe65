"""`extauthz models`: model versions, canary weights, blue-green promote and rollback.

Each change is validated (unknown model or version: a clear error, exit 2), written to the
catalog file atomically under a lock, pushed to OPA's data API, and recorded on the audit
trail's `ops` chain. A weight change needs nothing from Envoy: the policy picks the version
per request and Envoy routes on the header it gets. Adding or removing a version changes
Envoy's routes and clusters (dynamic files, no restart), in the order that never sends a
request to a version Envoy cannot route: add = Envoy first, then the policy; remove = the
policy first, a drain, then Envoy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from extauthz.cli.common import NOT_AUDITED, audit_action, csv
from extauthz.settings import Settings, load_settings


def _catalog_path(settings: Settings):  # type: ignore[no-untyped-def]
    from extauthz.dev.devstack import ROOT
    from extauthz.policy.versions import catalog_file

    policy_dir = settings.policy_dir
    return catalog_file(policy_dir if policy_dir.is_absolute() else ROOT / policy_dir)


def _describe(catalog: dict[str, Any], model: str) -> str:
    from extauthz.policy.versions import weights

    entry = catalog[model]
    parts = [f"{v}={w}" for v, w in weights(catalog, model).items()]
    return f"{model}: {' '.join(parts)} (stable {entry['stable']})"


def cmd_models_list(args: argparse.Namespace) -> int:
    from extauthz.policy.versions import read_catalog

    catalog = read_catalog(_catalog_path(load_settings()))
    if args.json:
        print(json.dumps({m: e for m, e in catalog.items() if "versions" in e}, indent=2))
        return 0
    for model, entry in sorted(catalog.items()):
        versions = entry.get("versions")
        if not versions:
            print(f"{model}: one version (no versions in the catalog)")
            continue
        previous = entry.get("previous") or "-"
        print(f"{model}: stable {entry['stable']}, previous {previous}")
        for name, v in sorted(versions.items()):
            extra = []
            if v.get("projects"):
                extra.append(f"projects {','.join(v['projects'])}")
            if v.get("testers"):
                extra.append(f"testers {','.join(v['testers'])}")
            if v.get("retired"):
                extra.append("retired")
            print(f"  {name:<12} weight {v['weight']:>3}  {'  '.join(extra)}".rstrip())
    return 0


def _change(
    action: str,
    model: str,
    change: Callable[[dict[str, Any]], dict[str, Any]],
    details: dict[str, Any],
    *,
    envoy: str = "",  # "before": routes/clusters first (a new version); "after": a removal
    drain: float = 0.0,
) -> int:
    """Read, change, validate, write, push to OPA, (Envoy), audit. Exit status."""
    from extauthz.policy.versions import (
        CatalogError,
        locked,
        push_to_opa,
        read_catalog,
        write_catalog,
    )

    settings = load_settings()
    path = _catalog_path(settings)
    with locked(path):
        before = read_catalog(path)
        try:
            after = change(before)
        except CatalogError as exc:
            print(f"models {action}: {exc}", file=sys.stderr)
            return 2
        if envoy == "before":
            try:
                _envoy(settings, after)
            except (OSError, TimeoutError) as exc:  # nothing changed for the policy
                print(f"models {action}: Envoy did not take the new routes: {exc}", file=sys.stderr)
                return 1
        write_catalog(path, after)
        outcome = "ok"
        try:
            push_to_opa(settings.opa_url, after, timeout=max(settings.opa_timeout, 2.0))
        except OSError as exc:  # the file stands: a watching OPA loads it when it can
            outcome = "written, not pushed"
            print(
                f"models {action}: {path} written, but OPA was not updated: {exc}", file=sys.stderr
            )
        # every service worker sees the new revision within one poll (and stops using
        # decisions cached under the old one)
        time.sleep(2 * settings.revision_poll_interval + 0.05)
        if envoy == "after" and outcome != "ok":
            print(
                f"models {action}: Envoy's routes left as they are while OPA may still choose "
                "the version; run `extauthz models sync` once OPA has the catalog",
                file=sys.stderr,
            )
        elif envoy == "after":
            time.sleep(drain)  # requests already routed to the version finish
            try:
                _envoy(settings, after)  # routes no longer name it
                _envoy(settings, after, prune=True)  # then its cluster goes
            except (OSError, TimeoutError) as exc:  # the policy no longer picks it: harmless
                outcome = "policy changed, Envoy not"
                print(
                    f"models {action}: the policy no longer serves it, but Envoy's routes were "
                    f"not updated ({exc}); run `extauthz models sync` when Envoy is up",
                    file=sys.stderr,
                )
    audited = audit_action(
        f"models.{action}",
        model,
        outcome,
        {
            **details,
            "before": _weights_or_none(before, model),
            "after": _weights_or_none(after, model),
        },
    )
    if model in after and "versions" in after[model]:
        print(_describe(after, model))
    if outcome != "ok":
        return 1
    return 0 if audited else NOT_AUDITED


def _weights_or_none(catalog: dict[str, Any], model: str) -> dict[str, Any] | None:
    entry = catalog.get(model) or {}
    if "versions" not in entry:
        return None
    return {
        "weights": {v: e["weight"] for v, e in sorted(entry["versions"].items())},
        "stable": entry.get("stable"),
        "previous": entry.get("previous", ""),
    }


def _envoy(settings: Settings, catalog: dict[str, Any], *, prune: bool = False) -> None:
    """Envoy's routes and model clusters for `catalog`, written as the edge generator's dynamic
    files (RDS/CDS, extauthz/edge/render.py); returns once the running Envoy has loaded them.
    Without `prune` clusters no route names any more stay (requests may still be on them)."""
    from extauthz.dev.devstack import Stack
    from extauthz.edge.catalog import parse_catalog

    stack = Stack(settings)
    stack.update_routes(parse_catalog(catalog), prune=prune)  # clusters first, then routes
    admin = f"http://127.0.0.1:{settings.envoy_admin_port}"
    _wait_for_routes(admin, stack.envoy_dir / "xds" / "rds" / "routes.json")
    if prune:
        _wait_for_clusters(admin, _clusters_file(stack.envoy_dir / "xds" / "cds" / "clusters.json"))


def _admin_json(url: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - Envoy's local admin
        return json.loads(resp.read())


def _wait_for_routes(admin: str, rds_file, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Until Envoy serves the route configuration version the RDS file holds."""
    want = json.loads(rds_file.read_text())["version_info"]
    deadline = time.monotonic() + timeout
    while True:
        dump = _admin_json(f"{admin}/config_dump?resource=dynamic_route_configs")
        if any(c.get("version_info") == want for c in dump.get("configs", [])):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Envoy did not load routes {want}")
        time.sleep(0.05)


def _clusters_file(cds_file) -> set[str]:  # type: ignore[no-untyped-def]
    return {r["name"] for r in json.loads(cds_file.read_text())["resources"]}


def _wait_for_clusters(admin: str, names: set[str], timeout: float = 10.0) -> None:
    """Until Envoy's dynamic model clusters are exactly those the CDS file names."""
    deadline = time.monotonic() + timeout
    while True:
        dump = _admin_json(f"{admin}/config_dump?resource=dynamic_active_clusters")
        active = {c["cluster"]["name"] for c in dump.get("configs", [])}
        if active == names:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Envoy's clusters {sorted(active)}, not {sorted(names)}")
        time.sleep(0.05)


def cmd_models_shift(args: argparse.Namespace) -> int:
    from extauthz.policy.versions import shift

    return _change(
        "shift",
        args.model,
        lambda c: shift(c, args.model, args.version, args.weight),
        {"version": args.version, "weight": args.weight},
    )


def cmd_models_promote(args: argparse.Namespace) -> int:
    from extauthz.policy.versions import promote

    return _change(
        "promote",
        args.model,
        lambda c: promote(c, args.model, args.version),
        {"version": args.version},
    )


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from extauthz.policy.versions import rollback

    return _change("rollback", args.model, lambda c: rollback(c, args.model)[0], {})


def cmd_models_add(args: argparse.Namespace) -> int:
    from extauthz.policy.versions import add_version

    return _change(
        "add",
        args.model,
        lambda c: add_version(c, args.model, args.version, args.projects, args.testers),
        {"version": args.version, "projects": list(args.projects), "testers": list(args.testers)},
        envoy="before",
    )


def cmd_models_remove(args: argparse.Namespace) -> int:
    from extauthz.policy.versions import remove_version

    return _change(
        "remove",
        args.model,
        lambda c: remove_version(c, args.model, args.version),
        {"version": args.version},
        envoy="after",
        drain=args.drain,
    )


def cmd_models_sync(args: argparse.Namespace) -> int:
    """Envoy's routes and model clusters from the catalog as it is (after a hand edit, or a
    change Envoy missed); clusters no route names are removed."""
    from extauthz.policy.versions import CatalogError, read_catalog, validate

    settings = load_settings()
    catalog = read_catalog(_catalog_path(settings))
    try:
        validate(catalog)
        _envoy(settings, catalog)
        _envoy(settings, catalog, prune=True)
    except CatalogError as exc:
        print(f"models sync: {exc}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError) as exc:
        print(f"models sync: Envoy did not take the routes: {exc}", file=sys.stderr)
        return 1
    print("Envoy's routes and model clusters follow the catalog")
    return 0


def _weight(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError("a weight is 0-100")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser(
        "models", help="model versions: canary weights, promote, rollback"
    ).add_subparsers(dest="models_command", required=True)
    mlist = models.add_parser("list", help="versions, weights, stable and previous per model")
    mlist.add_argument("--json", action="store_true")
    mlist.set_defaults(func=cmd_models_list)
    mshift = models.add_parser(
        "shift",
        help="give a version a weight; the others share the rest in proportion to their "
        "weights (all at 0: the stable version takes it)",
    )
    mshift.add_argument("model")
    mshift.add_argument("--version", required=True)
    mshift.add_argument("--weight", required=True, type=_weight, help="0-100")
    mshift.set_defaults(func=cmd_models_shift)
    mpromote = models.add_parser(
        "promote", help="the version at 100 and stable (the old stable kept as previous)"
    )
    mpromote.add_argument("model")
    mpromote.add_argument("--version", required=True)
    mpromote.set_defaults(func=cmd_models_promote)
    mrollback = models.add_parser(
        "rollback",
        help="a canary in progress: the stable version at 100; else the previous stable at 100",
    )
    mrollback.add_argument("model")
    mrollback.set_defaults(func=cmd_models_rollback)
    madd = models.add_parser(
        "add", help="a new version at weight 0 (Envoy's route and cluster first)"
    )
    madd.add_argument("model")
    madd.add_argument("--version", required=True)
    madd.add_argument("--projects", type=csv, default=(), help="only these projects' callers")
    madd.add_argument("--testers", type=csv, default=(), help="subjects pinned to it")
    madd.set_defaults(func=cmd_models_add)
    mremove = models.add_parser(
        "remove", help="drop a version at weight 0 (the policy first, then Envoy)"
    )
    mremove.add_argument("model")
    mremove.add_argument("--version", required=True)
    mremove.add_argument(
        "--drain",
        type=float,
        default=20.0,
        help="seconds between the policy change and Envoy's (requests in flight finish; "
        "default 20: more than the model routes' timeout)",
    )
    mremove.set_defaults(func=cmd_models_remove)
    msync = models.add_parser(
        "sync", help="Envoy's routes and model clusters from the catalog as it is (no restart)"
    )
    msync.set_defaults(func=cmd_models_sync)
