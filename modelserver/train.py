"""Train the demo models and write an MLServer model repository.

    python modelserver/train.py --out DIR [--force]

DIR gets one folder per model (model-settings.json + model.joblib, or the echo
runtime's module) and a server-level settings.json; serve it with
``mlserver start DIR`` (see modelserver/README.md).

Deterministic (fixed random_state) and idempotent: a model whose model.joblib exists and
whose model-settings.json is what this script would write (same scikit-learn version
included) is skipped unless --force.
Run it with the model server's venv (.venv-model), not the project venv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import sklearn
from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
SEED = 0
SKLEARN_IMPL = "mlserver_sklearn.SKLearnModel"
SKLEARN_TAG = f"scikit-learn/{sklearn.__version__}"

# Server-wide settings. Keys set here WIN over MLSERVER_* env vars, so ports are
# deliberately left out: set MLSERVER_HTTP_PORT / MLSERVER_GRPC_PORT per run.
SERVER_SETTINGS: dict[str, Any] = {
    "host": "127.0.0.1",
    "parallel_workers": 0,  # single process: fast start, no worker pool / .envs / .metrics
    "metrics_endpoint": None,  # no Prometheus server (metrics_port unused)
    "debug": False,  # no per-request access logs
    "load_models_at_startup": True,
}


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: Any) -> None:
    _write_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _split(loader: Callable, stratify: bool = True):
    X, y = loader(return_X_y=True)
    return train_test_split(
        X, y, test_size=0.25, random_state=SEED, stratify=y if stratify else None
    )


def train_digits():
    X_tr, X_te, y_tr, y_te = _split(load_digits)
    model = LogisticRegression(max_iter=5000, random_state=SEED).fit(X_tr, y_tr)
    return model, "accuracy", model.score(X_te, y_te)


def train_digits_v2():
    """digits v2, the canary of the demo rollout: the same estimator, much stronger
    regularisation (C=0.001), so its scores and some of its answers differ from v1's while it
    costs the same to run."""
    X_tr, X_te, y_tr, y_te = _split(load_digits)
    model = LogisticRegression(C=0.001, max_iter=5000, random_state=SEED).fit(X_tr, y_tr)
    return model, "accuracy", model.score(X_te, y_te)


def train_cancer():
    X_tr, X_te, y_tr, y_te = _split(load_breast_cancer)
    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=5000, random_state=SEED)
    ).fit(X_tr, y_tr)
    return model, "accuracy", model.score(X_te, y_te)


def train_diabetes():
    X_tr, X_te, y_tr, y_te = _split(load_diabetes, stratify=False)
    model = Ridge(alpha=0.1, random_state=SEED).fit(X_tr, y_tr)
    return model, "r2", model.score(X_te, y_te)


def train_iris():
    X_tr, X_te, y_tr, y_te = _split(load_iris)
    model = LogisticRegression(max_iter=1000, random_state=SEED).fit(X_tr, y_tr)
    return model, "accuracy", model.score(X_te, y_te)


# name -> (trainer, number of input features, is a classifier)
SKLEARN_MODELS: dict[str, tuple[Callable, int, bool]] = {
    "digits": (train_digits, 64, True),
    "cancer": (train_cancer, 30, True),
    "diabetes": (train_diabetes, 10, False),
    "iris": (train_iris, 4, True),
}


# Further versions of a model, each served from its own folder `<name>-<version>` under the
# same model name (MLServer: model-settings `parameters.version`; the catalog's `versions`).
# The folder `<name>` is v1. MLServer serves an unversioned path with the "newest" version
# (the greatest name), so Envoy always rewrites to /versions/<v> for a versioned model.
MORE_VERSIONS: dict[str, dict[str, Callable]] = {"digits": {"v2": train_digits_v2}}


def _sklearn_settings(name: str, version: str = "v1") -> dict[str, Any]:
    _, n_features, classifier = SKLEARN_MODELS[name]
    outputs = [{"name": "predict", "datatype": "INT64" if classifier else "FP64", "shape": [-1, 1]}]
    if classifier:
        outputs.append({"name": "predict_proba", "datatype": "FP64", "shape": [-1, -1]})
    return {
        "name": name,
        "implementation": SKLEARN_IMPL,
        "platform": "sklearn",
        "versions": [SKLEARN_TAG],  # a different scikit-learn version => retrain
        "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, n_features]}],
        "outputs": outputs,
        "parameters": {"uri": "./model.joblib", "version": version},
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_sklearn(out: Path, name: str, force: bool, version: str = "v1") -> None:
    folder = out / (name if version == "v1" else f"{name}-{version}")
    settings = _sklearn_settings(name, version)
    label = name if version == "v1" else f"{name}@{version}"
    if (
        not force
        and (folder / "model.joblib").is_file()
        and _read_json(folder / "model-settings.json") == settings
    ):
        print(f"{label:9s} exists, skipped (--force to retrain)")
        return
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    trainer, n_features, classifier = SKLEARN_MODELS[name]
    if version != "v1":
        trainer = MORE_VERSIONS[name][version]
    model, metric, score = trainer()
    assert model.n_features_in_ == n_features and hasattr(model, "predict_proba") == classifier
    # model.joblib first, model-settings.json last: settings present => model complete
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".model.joblib.")
    os.close(fd)
    try:
        joblib.dump(model, tmp)
        os.replace(tmp, folder / "model.joblib")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _write_json(folder / "model-settings.json", settings)
    print(f"{label:9s} held-out {metric} = {score:.4f}  ({time.perf_counter() - t0:.2f}s)")


def build_echo(out: Path, force: bool) -> None:
    folder = out / "echo"
    folder.mkdir(parents=True, exist_ok=True)
    src = (HERE / "echo_runtime.py").read_bytes()
    dst = folder / "echo_runtime.py"
    settings = {
        "name": "echo",
        # resolved with the model folder on sys.path (MLServer does that for
        # model-settings.json files loaded from disk)
        "implementation": "echo_runtime.EchoRuntime",
        "platform": "custom",
        "outputs": [{"name": "headers", "datatype": "BYTES", "shape": [1, 1]}],
        "parameters": {"version": "v1"},
    }
    settings_path = folder / "model-settings.json"
    if (
        not force
        and dst.is_file()
        and dst.read_bytes() == src
        and _read_json(settings_path) == settings
    ):
        print("echo      exists, skipped")
        return
    _write_atomic(dst, src)
    _write_json(settings_path, settings)
    print("echo      written (custom runtime, returns request headers)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="model repository directory")
    p.add_argument("--force", action="store_true", help="retrain even if files exist")
    args = p.parse_args(argv)

    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("error", category=UserWarning)  # e.g. ConvergenceWarning

    t0 = time.perf_counter()
    for name in SKLEARN_MODELS:
        build_sklearn(out, name, args.force)
        for version in MORE_VERSIONS.get(name, {}):
            build_sklearn(out, name, args.force, version)
    build_echo(out, args.force)
    settings_path = out / "settings.json"
    if args.force or _read_json(settings_path) != SERVER_SETTINGS:
        _write_json(settings_path, SERVER_SETTINGS)
    print(f"model repository: {out}  ({time.perf_counter() - t0:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
