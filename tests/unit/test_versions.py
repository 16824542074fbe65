"""The catalog's versions and the operator's changes (extauthz/policy/versions.py): pure."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from extauthz.dev.devstack import ROOT
from extauthz.policy.versions import (
    CatalogError,
    add_version,
    catalog_file,
    promote,
    read_catalog,
    remove_version,
    rollback,
    shift,
    validate,
    weights,
    write_catalog,
)

SHIPPED = read_catalog(catalog_file(ROOT / "rego"))


def catalog(**versions: int) -> dict:
    entry = {"project": "vision", "versions": {v: {"weight": w} for v, w in versions.items()}}
    entry.update(stable="v1", previous="")
    return {"digits": entry, "iris": {"project": "demo"}}


def test_the_shipped_catalog_is_valid_and_serves_digits_v1() -> None:
    validate(SHIPPED)
    assert weights(SHIPPED, "digits") == {"v1": 100, "v2": 0}
    assert SHIPPED["digits"]["stable"] == "v1"


def test_shift_gives_the_rest_to_the_others_in_proportion() -> None:
    assert weights(shift(catalog(v1=100, v2=0), "digits", "v2", 50), "digits") == {
        "v1": 50,
        "v2": 50,
    }
    three = catalog(v1=60, v2=0, v3=40)
    assert weights(shift(three, "digits", "v2", 50), "digits") == {"v1": 30, "v2": 50, "v3": 20}
    # rounding: largest remainders, the total stays 100
    odd = shift(catalog(v1=50, v2=0, v3=50), "digits", "v2", 33)
    assert weights(odd, "digits") == {"v1": 34, "v2": 33, "v3": 33}


def test_shift_with_every_other_at_zero_feeds_the_stable_version() -> None:
    promoted = promote(catalog(v1=100, v2=0), "digits", "v2")  # v2 100, stable v2, previous v1
    back = shift(promoted, "digits", "v2", 80)  # the rest to the previous stable
    assert weights(back, "digits") == {"v1": 20, "v2": 80}
    only = catalog(v1=100)
    with pytest.raises(CatalogError, match="no other version"):
        shift(only, "digits", "v1", 50)


def test_promote_then_rollback() -> None:
    start = catalog(v1=90, v2=10)
    start["digits"]["versions"]["v2"]["projects"] = ["vision-beta"]
    promoted = promote(start, "digits", "v2")
    assert weights(promoted, "digits") == {"v1": 0, "v2": 100}
    assert promoted["digits"]["stable"] == "v2" and promoted["digits"]["previous"] == "v1"
    assert "projects" not in promoted["digits"]["versions"]["v2"]  # no longer a canary
    back, target = rollback(promoted, "digits")
    assert target == "v1" and weights(back, "digits") == {"v1": 100, "v2": 0}
    # a canary again for its projects only: others cannot ask for it by name after the rollback
    assert back["digits"]["versions"]["v2"]["projects"] == ["vision-beta"]
    assert "lifted_projects" not in back["digits"]["versions"]["v2"]
    assert back["digits"]["stable"] == "v1" and back["digits"]["previous"] == ""
    with pytest.raises(CatalogError, match="nothing to roll back"):
        rollback(back, "digits")
    assert start["digits"]["versions"]["v2"]["weight"] == 10  # the input is never changed


def test_rollback_of_a_canary_returns_to_the_stable_version() -> None:
    back, target = rollback(catalog(v1=50, v2=50), "digits")
    assert target == "v1" and weights(back, "digits") == {"v1": 100, "v2": 0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: shift(c, "mnist", "v1", 10), "unknown model 'mnist'"),
        (lambda c: shift(c, "iris", "v1", 10), "has no versions"),
        (lambda c: shift(c, "digits", "v9", 10), "no version 'v9'"),
        (lambda c: shift(c, "digits", "v2", 101), "0-100"),
        (lambda c: promote(c, "digits", "v9"), "no version 'v9'"),
        (lambda c: add_version(c, "digits", "v1"), "already has"),
        (lambda c: add_version(c, "digits", "../x"), "not a version name"),
        (lambda c: remove_version(c, "digits", "v1"), "still serves"),
    ],
)
def test_bad_changes_say_what_is_wrong(change, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CatalogError, match=message):
        change(catalog(v1=100, v2=0))


def test_add_and_remove_a_version() -> None:
    added = add_version(catalog(v1=100), "digits", "v3", ("vision-beta",), ("qa",))
    assert added["digits"]["versions"]["v3"] == {
        "weight": 0,
        "projects": ["vision-beta"],
        "testers": ["qa"],
    }
    assert "v3" not in remove_version(added, "digits", "v3")["digits"]["versions"]


@pytest.mark.parametrize(
    "patch",
    [
        {"versions": {"v1": {"weight": 90}}},
        {"versions": {"v1": {"weight": "100"}}},
        {"versions": {"v1": {"weight": 100, "colour": "red"}}},
        {"versions": {"v 1": {"weight": 100}}, "stable": "v 1"},
        {"stable": "v7"},
        {"previous": "v7"},
        {"versions": {"v1": {"weight": 100, "retired": True}}},
        {"versions": {"v1": {"weight": 100, "projects": "vision"}}},
    ],
)
def test_validate_refuses_what_the_policy_would_misread(patch: dict) -> None:
    bad = catalog(v1=100)
    bad["digits"].update(patch)
    with pytest.raises(CatalogError):
        validate(bad)


def test_write_is_atomic_and_validated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "data.json"
    write_catalog(path, catalog(v1=100))
    assert json.loads(path.read_text()) == catalog(v1=100)
    with pytest.raises(CatalogError):
        write_catalog(path, catalog(v1=50))
    assert json.loads(path.read_text()) == catalog(v1=100)
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_the_cli_refuses_an_unknown_version_without_writing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import shutil

    shutil.copytree(ROOT / "rego", tmp_path / "rego")
    env = {**os.environ, "EXTAUTHZ_POLICY_DIR": str(tmp_path / "rego")}
    before = catalog_file(tmp_path / "rego").read_bytes()
    out = subprocess.run(
        [sys.executable, "-m", "extauthz", "models", "shift", "digits", "--version", "v9"]
        + ["--weight", "10"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "digits has no version 'v9'" in out.stderr.replace("'digits'", "digits")
    assert catalog_file(tmp_path / "rego").read_bytes() == before
    listed = subprocess.run(
        [sys.executable, "-m", "extauthz", "models", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "digits: stable v1" in listed.stdout and "v2           weight   0" in listed.stdout


def test_a_removal_opa_did_not_take_leaves_envoy_alone(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """OPA unreachable: the catalog file is written (a watching OPA loads it later), but the
    version's route stays, since the policy may still choose it; exit 1."""
    import shutil

    from extauthz.cli import models

    shutil.copytree(ROOT / "rego", tmp_path / "rego")
    path = catalog_file(tmp_path / "rego")
    write_catalog(path, add_version(read_catalog(path), "digits", "v3"))
    monkeypatch.setenv("EXTAUTHZ_POLICY_DIR", str(tmp_path / "rego"))
    monkeypatch.setenv("EXTAUTHZ_OPA_URL", "http://127.0.0.1:9")  # nothing listens
    monkeypatch.setenv("EXTAUTHZ_AUDIT_ENABLED", "false")
    touched: list[bool] = []
    monkeypatch.setattr(models, "_envoy", lambda *a, **k: touched.append(True))
    args = models.argparse.Namespace(model="digits", version="v3", drain=0.0)
    assert models.cmd_models_remove(args) == 1
    assert "v3" not in read_catalog(path)["digits"]["versions"]
    assert touched == []
