"""The one reader of a V2 (Open Inference Protocol) inference request body.

It computes what the model server will execute — rows, features per row, datatypes, requested
outputs, parameter names — the way MLServer's codecs do (request-level `content_type` "np"
(the default of its runtimes), "pd" or "str"; per-input "np", "str", "base64", "datetime"),
which for the accepted subset is also how Triton and KServe count rows (`shape[0]`). Whatever
the gateway cannot read unambiguously is `valid=False` with a `BodyError`; nothing raises.
The accepted subset is documented in rego/README.md ("The V2 body the gateway accepts").
"""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

MAX_INPUTS = 256  # pandas requests send one input per feature column
MAX_OUTPUTS = 8
MAX_PARAMETERS = 16  # names per parameters object
MAX_NAME = 64  # tensor and parameter names go into the policy input and the decision cache key
MAX_ID = 256
MAX_RANK = 6
MAX_ELEMENTS = 65_536  # over all inputs; the body itself is bounded by max_body_bytes
MAX_ROW_VALUES = 4_096  # numeric feature values feature_rows() returns (analytics, shaping)

REQUEST_CONTENT_TYPES = frozenset({"np", "pd", "str"})  # MLServer's request codecs
INPUT_CONTENT_TYPES = frozenset({"np", "str", "base64", "datetime"})  # its input codecs
_STRING_CODECS = frozenset({"str", "base64", "datetime"})  # BYTES, one element per row

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")
_BODY_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})
_INPUT_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})

# datatype -> (element types JSON must give, lowest, highest); None: no range (bool, str)
_FP64_MAX = 1.7976931348623157e308
_DATATYPES: dict[str, tuple[frozenset[type], float | None, float | None]] = {
    "BOOL": (frozenset({bool}), None, None),
    "UINT8": (frozenset({int}), 0, 2**8 - 1),
    "UINT16": (frozenset({int}), 0, 2**16 - 1),
    "UINT32": (frozenset({int}), 0, 2**32 - 1),
    "UINT64": (frozenset({int}), 0, 2**64 - 1),
    "INT8": (frozenset({int}), -(2**7), 2**7 - 1),
    "INT16": (frozenset({int}), -(2**15), 2**15 - 1),
    "INT32": (frozenset({int}), -(2**31), 2**31 - 1),
    "INT64": (frozenset({int}), -(2**63), 2**63 - 1),
    "FP16": (frozenset({int, float}), -65504.0, 65504.0),
    "FP32": (frozenset({int, float}), -3.4028234663852886e38, 3.4028234663852886e38),
    "FP64": (frozenset({int, float}), -_FP64_MAX, _FP64_MAX),
    "BYTES": (frozenset({str}), None, None),
}


class BodyError(enum.StrEnum):
    """Why a body is not valid; goes into the policy input (`body.reason`), never to a client."""

    OK = "ok"
    NOT_JSON = "not_json"  # not UTF-8 JSON, NaN/Infinity, or a duplicate object key
    TOO_DEEP = "too_deep"  # nesting deeper than the JSON parser's recursion allows
    NOT_OBJECT = "not_object"
    UNKNOWN_FIELD = "unknown_field"  # a member the gateway does not interpret
    BAD_ID = "bad_id"
    NO_INPUTS = "no_inputs"
    TOO_MANY_INPUTS = "too_many_inputs"
    BAD_INPUT = "bad_input"  # an input that is not {name, shape, datatype, data[, parameters]}
    BAD_NAME = "bad_name"  # empty, too long, or outside [A-Za-z0-9_.:/-]
    DUPLICATE_NAME = "duplicate_name"
    BAD_DATATYPE = "bad_datatype"
    BAD_SHAPE = "bad_shape"  # not 1..MAX_RANK positive integers
    SHAPE_MISMATCH = "shape_mismatch"  # data does not hold product(shape) elements in shape
    TOO_MANY_ELEMENTS = "too_many_elements"
    BAD_DATA = "bad_data"  # an element of the wrong JSON type or out of the datatype's range
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    PRIVATE_PARAMETER = "private_parameter"  # a name starting with "_" (_decoded_payload)
    BAD_PARAMETERS = "bad_parameters"  # not an object, too many, or not allowed there
    MIXED_ROWS = "mixed_rows"  # inputs disagree on the number of rows
    BAD_OUTPUTS = "bad_outputs"
    TOO_MANY_OUTPUTS = "too_many_outputs"


@dataclass(frozen=True, slots=True)
class V2Body:
    """Canonical facts of one inference request body (see the module docstring)."""

    valid: bool
    reason: BodyError
    content_type: str = ""  # request-level: "" (the runtime's default, np) | np | pd | str
    rows: int = 0  # what the model runs on: shape[0] of every input (pd: each input's length)
    features: int = 0  # values per row over all inputs: sum of product(shape[1:])
    inputs: tuple[str, ...] = ()  # input names, in request order
    datatypes: tuple[str, ...] = ()  # sorted, unique
    outputs: tuple[str, ...] = ()  # requested output names, sorted
    parameters: tuple[str, ...] = ()  # request-level and per-input parameter names, sorted
    output_parameters: tuple[str, ...] = ()  # per-output parameter names, sorted
    # each numeric input's row-major elements and row width, for feature_rows(); () when an
    # input is BYTES. Read-only references into the parsed body: nothing is copied up front.
    columns: tuple[tuple[list[Any], int], ...] = field(default=(), repr=False, compare=False)

    def feature_rows(self, limit: int = MAX_ROW_VALUES) -> tuple[tuple[float, ...], ...]:
        """The numeric feature rows as floats (row i = each input's i-th slice, in input
        order); () when the body is invalid, an input is BYTES, or rows x features > limit."""
        if not self.columns or self.rows * self.features > limit:
            return ()
        return tuple(
            tuple(
                map(
                    float,
                    chain.from_iterable(flat[r * w : (r + 1) * w] for flat, w in self.columns),
                )
            )
            for r in range(self.rows)
        )


class _Invalid(Exception):  # noqa: N818 - internal control flow, never leaves this module
    def __init__(self, reason: BodyError) -> None:
        self.reason = reason


def _refuse_constant(name: str) -> Any:
    raise ValueError(name)  # NaN / Infinity are not JSON; MLServer's orjson refuses them too


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):  # parsers disagree on which duplicate wins: refuse them
        raise ValueError("duplicate key")
    return obj


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)


def read_body(body: bytes) -> V2Body:
    """Read one V2 inference request body. Never raises; bounded in depth and size."""
    try:
        doc = _DECODER.decode(body.decode("utf-8"))
    except RecursionError:  # tens of thousands of '[': the C scanner stops at the limit
        return V2Body(False, BodyError.TOO_DEEP)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return V2Body(False, BodyError.NOT_JSON)
    try:
        return _read_request(doc)
    except _Invalid as invalid:
        return V2Body(False, invalid.reason)


def _read_request(doc: Any) -> V2Body:
    if type(doc) is not dict:
        raise _Invalid(BodyError.NOT_OBJECT)
    if not doc.keys() <= _BODY_KEYS:
        raise _Invalid(BodyError.UNKNOWN_FIELD)
    request_id = doc.get("id")
    if request_id is not None and (type(request_id) is not str or len(request_id) > MAX_ID):
        raise _Invalid(BodyError.BAD_ID)
    params = _parameters(doc.get("parameters"))
    content_type = _content_type(params, REQUEST_CONTENT_TYPES)
    inputs = doc.get("inputs")
    if type(inputs) is not list or not inputs:
        raise _Invalid(BodyError.NO_INPUTS)
    if len(inputs) > MAX_INPUTS:
        raise _Invalid(BodyError.TOO_MANY_INPUTS)
    if content_type == "str" and len(inputs) != 1:  # a single-input request codec
        raise _Invalid(BodyError.BAD_INPUT)
    names: dict[str, None] = {}  # ordered, and a constant-time duplicate check
    datatypes: set[str] = set()
    parameter_names = set(params)
    rows, features, elements = 0, 0, 0
    columns: list[tuple[list[Any], int]] = []
    for tensor in inputs:  # one plain loop: this runs on every inference request
        name, datatype, n_rows, width, flat, names_there = _read_input(tensor, content_type)
        if name in names:
            raise _Invalid(BodyError.DUPLICATE_NAME)
        if rows and n_rows != rows:
            raise _Invalid(BodyError.MIXED_ROWS)
        rows, features, elements = n_rows, features + width, elements + len(flat)
        names[name] = None
        datatypes.add(datatype)
        parameter_names.update(names_there)
        columns.append((flat, width))
    if elements > MAX_ELEMENTS:
        raise _Invalid(BodyError.TOO_MANY_ELEMENTS)
    outputs, output_params = _read_outputs(doc.get("outputs"))
    return V2Body(
        valid=True,
        reason=BodyError.OK,
        content_type=content_type,
        rows=rows,
        features=features,
        inputs=tuple(names),
        datatypes=tuple(sorted(datatypes)),
        outputs=outputs,
        parameters=tuple(sorted(parameter_names)),
        output_parameters=output_params,
        columns=() if "BYTES" in datatypes else tuple(columns),
    )


# one input as read: (name, datatype, rows, elements per row, row-major elements, parameter
# names); a plain tuple, as this runs on every request
_Tensor = tuple[str, str, int, int, list[Any], tuple[str, ...]]


def _read_input(tensor: Any, request_content_type: str) -> _Tensor:
    if type(tensor) is not dict or not {"name", "shape", "datatype", "data"} <= tensor.keys():
        raise _Invalid(BodyError.BAD_INPUT)
    if not tensor.keys() <= _INPUT_KEYS:
        raise _Invalid(BodyError.UNKNOWN_FIELD)
    name = _name(tensor["name"])
    datatype = tensor["datatype"]
    if type(datatype) is not str or datatype not in _DATATYPES:
        raise _Invalid(BodyError.BAD_DATATYPE)
    params = _parameters(tensor.get("parameters"))
    if not set(params) <= {"content_type"}:  # e.g. Triton's binary_data_size changes the data
        raise _Invalid(BodyError.BAD_PARAMETERS)
    codec = _content_type(params, INPUT_CONTENT_TYPES)
    shape = _shape(tensor["shape"])
    flat = _elements(tensor["data"], shape)
    # one element per row: pandas makes each input a column and ignores shape (it takes
    # len(data)); string codecs return one item per element whatever the shape
    if request_content_type in ("pd", "str") or codec in _STRING_CODECS:
        if len(shape) > 2 or math.prod(shape[1:]) != 1 or flat is not tensor["data"]:
            raise _Invalid(BodyError.BAD_SHAPE)
    if (codec in _STRING_CODECS or request_content_type == "str") and datatype != "BYTES":
        raise _Invalid(BodyError.BAD_DATATYPE)
    _check_elements(flat, datatype)
    return name, datatype, shape[0], len(flat) // shape[0], flat, tuple(params)


def _name(name: Any) -> str:
    if type(name) is not str or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise _Invalid(BodyError.BAD_NAME)
    return name


def _parameters(params: Any) -> dict[str, Any]:
    """A parameters object: at most MAX_PARAMETERS public names (no leading underscore)."""
    if params is None:  # null is what pydantic's Optional reads as absent
        return {}
    if type(params) is not dict or len(params) > MAX_PARAMETERS:
        raise _Invalid(BodyError.BAD_PARAMETERS)
    for key in params:
        if key.startswith("_"):  # MLServer keeps decoded payloads in `_decoded_payload`
            raise _Invalid(BodyError.PRIVATE_PARAMETER)
        if len(key) > MAX_NAME or not _NAME.fullmatch(key):
            raise _Invalid(BodyError.BAD_PARAMETERS)
    return params


def _content_type(params: dict[str, Any], allowed: frozenset[str]) -> str:
    if "content_type" not in params:
        return ""
    value = params["content_type"]
    if type(value) is not str or value not in allowed:
        raise _Invalid(BodyError.UNSUPPORTED_CONTENT_TYPE)
    return value


def _shape(shape: Any) -> list[int]:
    if type(shape) is not list or not 1 <= len(shape) <= MAX_RANK:
        raise _Invalid(BodyError.BAD_SHAPE)
    size = 1
    for dim in shape:
        if type(dim) is not int or dim < 1:  # bool is not int here; no empty tensors
            raise _Invalid(BodyError.BAD_SHAPE)
        size *= dim
        if size > MAX_ELEMENTS:  # checked per dimension: the product never grows unbounded
            raise _Invalid(BodyError.TOO_MANY_ELEMENTS)
    return shape


def _elements(data: Any, shape: list[int]) -> list[Any]:
    """The row-major elements of `data`: flat with product(shape) elements, or nested exactly
    as `shape` (what numpy's reshape accepts unambiguously). Iterative, one level at a time."""
    if type(data) is not list:
        raise _Invalid(BodyError.SHAPE_MISMATCH)
    if len(shape) == 1 or not data or type(data[0]) is not list:
        if len(data) != math.prod(shape):
            raise _Invalid(BodyError.SHAPE_MISMATCH)
        return data  # a nested element left in here fails the element type check
    if len(data) != shape[0]:
        raise _Invalid(BodyError.SHAPE_MISMATCH)
    level = data
    for dim in shape[1:]:
        if set(map(type, level)) != {list} or set(map(len, level)) != {dim}:
            raise _Invalid(BodyError.SHAPE_MISMATCH)
        level = list(chain.from_iterable(level))
    return level


def _check_elements(flat: list[Any], datatype: str) -> None:
    kinds, lowest, highest = _DATATYPES[datatype]
    found = set(map(type, flat))
    if not found <= kinds:  # type(), not isinstance: True is not a number
        raise _Invalid(BodyError.BAD_DATA)
    if lowest is None:
        return
    if datatype == "FP64":  # one C-level pass: 1e400 (inf) is not finite, 10**400 overflows
        try:
            in_range = math.isfinite(math.fsum(flat))
        except (OverflowError, ValueError):  # ValueError: 1e400 and -1e400 together
            in_range = False
    else:
        in_range = lowest <= min(flat) and max(flat) <= highest
    if not in_range:
        raise _Invalid(BodyError.BAD_DATA)  # numpy would overflow or raise in the server


def _read_outputs(outputs: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if outputs is None:
        return (), ()
    if type(outputs) is not list:
        raise _Invalid(BodyError.BAD_OUTPUTS)
    if len(outputs) > MAX_OUTPUTS:
        raise _Invalid(BodyError.TOO_MANY_OUTPUTS)
    names: list[str] = []
    params: set[str] = set()
    for output in outputs:
        if type(output) is not dict or "name" not in output:
            raise _Invalid(BodyError.BAD_OUTPUTS)
        if not output.keys() <= _OUTPUT_KEYS:
            raise _Invalid(BodyError.UNKNOWN_FIELD)
        names.append(_name(output["name"]))
        out_params = _parameters(output.get("parameters"))
        _content_type(out_params, INPUT_CONTENT_TYPES)  # the codec that encodes the output
        params.update(out_params)
    if len(set(names)) != len(names):  # the server would run the model once per entry
        raise _Invalid(BodyError.DUPLICATE_NAME)
    return tuple(sorted(names)), tuple(sorted(params))
