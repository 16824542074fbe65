"""Rewrite a V2 (Open Inference Protocol) inference response by a ResponsePlan, and the
generic error every model-server failure becomes. Pure: bytes in, bytes out.

A class-score output is a floating-point output with two or more values per row (e.g.
`predict_proba` of shape [rows, classes]). In order:
- `drop_outputs`: outputs of those names are removed;
- `labels_only`: each class-score output becomes the index of its highest score per row (INT64,
  shape [rows, 1], same name); a floating-point output with one value per row (a regression)
  is rounded to 0 decimals;
- `max_classes` k: each class-score output keeps its k highest scores per row, highest first
  (shape [rows, k]), and a new output `<name>_classes` (INT64, [rows, k]) says whose they are;
- `round` n: every floating-point value left is rounded to n decimals.
A text (BYTES) output in an answer whose scores are shaped raises too: scores encoded as text
(an output `content_type` of `str` or `base64`) would otherwise pass unrounded. Anything that
is not such a response raises ShapeError: the caller answers 503, never a half or unshaped
body.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from extauthz.types import ResponsePlan

FLOATS = frozenset({"FP16", "FP32", "FP64"})
INTS = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_KNOWN = FLOATS | INTS | {"BOOL", "BYTES"}


class ShapeError(ValueError):
    """The answer cannot be shaped as the plan says (the reason is logged, never sent)."""


# The client's side of a model-server failure: the gateway's own generic bodies
# (extauthz/edge/filters.py, local_reply_config) and the status they go with.
_KEPT = {
    401: b'{"error":"unauthenticated"}',
    403: b'{"error":"forbidden"}',
    404: b'{"error":"not_found"}',
    413: b'{"error":"payload_too_large"}',
    429: b'{"error":"rate_limited"}',
}
UNAVAILABLE = (503, b'{"error":"unavailable"}')
BAD_REQUEST = (400, b'{"error":"bad_request"}')


def generic_error(status: int) -> tuple[int, bytes]:
    """What the client gets for a model-server error of `status`: 401/403/404/413/429 keep
    their code, any other 4xx is 400 bad_request, every 5xx (and anything else) 503."""
    if status in _KEPT:
        return status, _KEPT[status]
    if 400 <= status < 500:
        return BAD_REQUEST
    return UNAVAILABLE


def _flat(data: Any, size: int) -> list[Any]:
    """A tensor's data, flattened row-major; its length must be the shape's product."""
    out: list[Any] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            out.append(item)
    if len(out) != size:
        raise ShapeError("data does not match shape")
    return out


def _numbers(values: list[Any]) -> list[float]:
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ShapeError("a floating-point output holds a non-number")
    return values


def _output(out: Any) -> tuple[str, str, list[int], list[Any]]:
    if not isinstance(out, dict):
        raise ShapeError("an output is not an object")
    name, datatype, shape = out.get("name"), out.get("datatype"), out.get("shape")
    if not isinstance(name, str) or datatype not in _KNOWN:
        raise ShapeError("an output has no name or an unknown datatype")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ShapeError("an output has a bad shape")
    return name, datatype, shape, _flat(out.get("data"), math.prod(shape))


def _rows(values: list[float], rows: int, cols: int) -> list[list[float]]:
    return [values[r * cols : (r + 1) * cols] for r in range(rows)]


def _shape_output(out: dict[str, Any], plan: ResponsePlan) -> list[dict[str, Any]]:
    name, datatype, shape, values = _output(out)
    if datatype == "BYTES" and _touches_scores(plan):
        # scores sent as text (an output `content_type` of str/base64) would pass unrounded
        raise ShapeError("a text output in an answer whose scores are shaped")
    if datatype not in FLOATS:
        return [out]
    values = _numbers(values)
    rows = shape[0]
    cols = math.prod(shape[1:]) if len(shape) > 1 else 1
    extra: list[dict[str, Any]] = []
    if plan.labels_only:
        if cols >= 2:
            labels = [max(range(cols), key=row.__getitem__) for row in _rows(values, rows, cols)]
            return [{**out, "datatype": "INT64", "shape": [rows, 1], "data": labels}]
        return [{**out, "data": [float(round(v)) for v in values]}]
    if plan.max_classes is not None and cols >= 2 and plan.max_classes < cols:
        k = plan.max_classes
        top, classes = [], []
        for row in _rows(values, rows, cols):
            order = sorted(range(cols), key=lambda i, row=row: (-row[i], i))[:k]
            classes.extend(order)
            top.extend(row[i] for i in order)
        values = top
        out = {**out, "shape": [rows, k]}
        extra.append(
            {"name": f"{name}_classes", "datatype": "INT64", "shape": [rows, k], "data": classes}
        )
    if plan.round is not None:
        n = plan.round
        values = [round(v, n) for v in values]
    return [{**out, "data": values}, *extra]


def _touches_scores(plan: ResponsePlan) -> bool:
    return plan.round is not None or plan.max_classes is not None or plan.labels_only


def shape_response(raw: bytes, plan: ResponsePlan) -> bytes:
    """The V2 inference response `raw`, shaped by `plan` (module docstring)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ShapeError("not JSON") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("outputs"), list):
        raise ShapeError("not a V2 inference response")
    shaped: list[dict[str, Any]] = []
    for out in doc["outputs"]:
        if isinstance(out, dict) and out.get("name") in plan.drop_outputs:
            continue
        shaped.extend(_shape_output(out, plan))
    doc["outputs"] = shaped
    return orjson.dumps(doc)
