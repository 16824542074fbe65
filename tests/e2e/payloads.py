"""V2 inference bodies for the demo models (rows of the datasets that ship with scikit-learn)."""

from __future__ import annotations

from extauthz.demo import CANCER_ROW, DIGIT_ZERO


def infer(features: list[float], outputs: list[str] | None = None) -> dict:
    body: dict = {
        "inputs": [
            {"name": "input-0", "shape": [1, len(features)], "datatype": "FP64", "data": features}
        ]
    }
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    return body


DIGITS = infer(DIGIT_ZERO)
CANCER = infer(CANCER_ROW)
ECHO = infer([1.0])
