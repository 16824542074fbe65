"""V2 inference bodies for the demo models (rows of the datasets that ship with scikit-learn)."""

from __future__ import annotations

from extauthz.dev.demo import CANCER_ROW, DIGIT_ZERO


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
DIABETES = infer(
    [0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026, 0.0199, -0.0176]
)  # load_diabetes()[0]
IRIS = infer([5.1, 3.5, 1.4, 0.2])  # load_iris()[0], a setosa

BY_MODEL = {"digits": DIGITS, "cancer": CANCER, "diabetes": DIABETES, "iris": IRIS, "echo": ECHO}
