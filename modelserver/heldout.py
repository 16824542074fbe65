"""Write the demo classifiers' held-out rows (the test split train.py never trains on).

    python modelserver/heldout.py --out DIR

DIR/<model>.json = {"reference": {"rows", "labels"}, "replay": {"rows", "labels"}}: the
held-out split cut in two halves. The dev stack registers `reference` as the model's
analytics reference sample (`extauthz analytics register`); `replay` is what benign clients
(tests, the red-team harness) send, so no benign query is one the profile was built from.
Run it with the model server's venv (.venv-model). Deterministic.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sklearn.datasets import load_breast_cancer, load_digits, load_iris  # noqa: E402
from train import SKLEARN_MODELS, _split  # noqa: E402

LOADERS = {"digits": load_digits, "cancer": load_breast_cancer, "iris": load_iris}


def heldout(name: str) -> dict:
    _, X_te, _, y_te = _split(LOADERS[name])
    half = len(X_te) // 2
    return {
        "reference": {"rows": X_te[:half].tolist(), "labels": y_te[:half].tolist()},
        "replay": {"rows": X_te[half:].tolist(), "labels": y_te[half:].tolist()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in LOADERS:
        assert name in SKLEARN_MODELS
        path = args.out / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(heldout(name)))
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
