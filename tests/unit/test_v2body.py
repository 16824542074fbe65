"""The V2 body reader: rows as the model server computes them, and every bypass of issue 11."""

from __future__ import annotations

import json
from typing import Any

import pytest

from extauthz.v2body import MAX_ELEMENTS, MAX_ROW_VALUES, BodyError, V2Body, read_body
from tests.e2e.payloads import DIGITS

ROW = DIGITS["inputs"][0]["data"]
E = BodyError


def fp64(numbers: bytes) -> bytes:
    """A one-input FP64 body with `numbers` spelled exactly as given (JSON tokens)."""
    count = numbers.count(b",") + 1
    head = b'{"inputs": [{"name": "x", "shape": [%d], "datatype": "FP64", "data": [' % count
    return head + numbers + b"]}]}"


def read(body: Any) -> V2Body:
    return read_body(body if isinstance(body, bytes) else json.dumps(body).encode())


def tensor(shape: list, data: list, datatype: str = "FP64", name: str = "x", **extra: Any) -> dict:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data, **extra}


def body(*inputs: dict, **extra: Any) -> dict:
    return {"inputs": list(inputs), **extra}


def pd(*inputs: dict) -> dict:
    return body(*inputs, parameters={"content_type": "pd"})


def test_the_digits_request() -> None:
    got = read(DIGITS)
    assert got.valid and got.reason is E.OK
    assert (got.rows, got.features, got.content_type) == (1, 64, "")
    assert got.inputs == ("input-0",) and got.datatypes == ("FP64",)
    assert got.feature_rows() == (tuple(float(v) for v in ROW),)


@pytest.mark.parametrize("content_type", [None, "np"])
def test_numpy_rows_are_the_first_dimension(content_type: str | None) -> None:
    params = {"parameters": {"content_type": content_type}} if content_type else {}
    flat = read(body(tensor([3, 64], ROW * 3), **params))
    nested = read(body(tensor([3, 64], [ROW] * 3), **params))
    cube = read(body(tensor([2, 2, 16], [[ROW[:16], ROW[16:32]], [ROW[32:48], ROW[48:]]])))
    assert (flat.rows, flat.features) == (nested.rows, nested.features) == (3, 64)
    assert flat.feature_rows() == nested.feature_rows() and len(flat.feature_rows()) == 3
    assert (cube.rows, cube.features) == (2, 32)
    assert cube.feature_rows()[1] == tuple(float(v) for v in ROW[32:])


def test_pandas_rows_are_the_length_of_each_column() -> None:
    """The bypass of issue 11: with content_type pd MLServer runs len(data) rows."""
    got = read(pd(tensor([484], [0.5] * 484)))
    assert got.valid and (got.rows, got.features, got.content_type) == (484, 1, "pd")
    columns = read(pd(*(tensor([5, 1], [float(i)] * 5, name=f"c{i}") for i in range(3))))
    assert (columns.rows, columns.features) == (5, 3)
    assert columns.feature_rows()[0] == (0.0, 1.0, 2.0)


@pytest.mark.parametrize(
    ("request_body", "reason"),
    [
        # pandas ignores shape: a [1, 64] tensor would run as 64 (or len(data)) rows
        (pd(tensor([1, 64], ROW)), E.BAD_SHAPE),
        (pd(tensor([1, 64], [0.0] * 484)), E.SHAPE_MISMATCH),
        (pd(tensor([1], [0.0] * 484)), E.SHAPE_MISMATCH),
        (pd(tensor([2, 1], [[1.0], [2.0]])), E.BAD_SHAPE),  # pandas wants flat columns
        (pd(tensor([3], [1.0] * 3), tensor([4], [1.0] * 4, name="y")), E.MIXED_ROWS),
        # a decoded payload reaches the model unchecked, at any level
        (
            body(tensor([1, 64], ROW, parameters={"_decoded_payload": [[0] * 64] * 500})),
            E.PRIVATE_PARAMETER,
        ),
        (body(tensor([1, 64], ROW), parameters={"_decoded_payload": 1}), E.PRIVATE_PARAMETER),
        (
            body(tensor([1, 64], ROW), outputs=[{"name": "p", "parameters": {"_x": 1}}]),
            E.PRIVATE_PARAMETER,
        ),
        # shape and data disagree
        (body(tensor([1, 64], ROW[:63])), E.SHAPE_MISMATCH),
        (body(tensor([1, 64], ROW * 2)), E.SHAPE_MISMATCH),
        (body(tensor([2, 64], [ROW, ROW[:63]])), E.SHAPE_MISMATCH),
        (body(tensor([2, 64], [ROW, ROW, ROW])), E.SHAPE_MISMATCH),
        (body(tensor([2, 32], [ROW])), E.SHAPE_MISMATCH),
        (body(tensor([1, 64], [ROW[:32], ROW[32:]])), E.SHAPE_MISMATCH),
        (body(tensor([1, 64], {"a": 1})), E.SHAPE_MISMATCH),
        (body(tensor([64], [[v] for v in ROW])), E.BAD_DATA),
        (body(tensor([2, 2], [1.0, [2.0], 3.0, 4.0])), E.BAD_DATA),
        # dimensions
        (body(tensor([-1, 64], ROW)), E.BAD_SHAPE),
        (body(tensor([0, 64], [])), E.BAD_SHAPE),
        (body(tensor(["1", 64], ROW)), E.BAD_SHAPE),
        (body(tensor([1.0, 64], ROW)), E.BAD_SHAPE),
        (body(tensor([True, 64], ROW)), E.BAD_SHAPE),
        (body(tensor([], [1.0])), E.BAD_SHAPE),
        (body(tensor([1] * 7, [1.0])), E.BAD_SHAPE),
        (body(tensor("1,64", ROW)), E.BAD_SHAPE),
        (body(tensor([MAX_ELEMENTS + 1], [])), E.TOO_MANY_ELEMENTS),
        (body(tensor([2**40, 2**40], [])), E.TOO_MANY_ELEMENTS),
        # names
        (body(tensor([1], [1.0]), tensor([1], [1.0])), E.DUPLICATE_NAME),
        (body(tensor([1], [1.0], name="")), E.BAD_NAME),
        (body(tensor([1], [1.0], name="x" * 65)), E.BAD_NAME),
        (body(tensor([1], [1.0], name="a b")), E.BAD_NAME),
        (body(tensor([1], [1.0], name=7)), E.BAD_NAME),
        # rows must agree across inputs
        (body(tensor([1, 64], ROW), tensor([2, 1], [1.0, 2.0], name="y")), E.MIXED_ROWS),
        # data that is not of its datatype
        (body(tensor([1, 2], ["1", 2.0])), E.BAD_DATA),
        (body(tensor([1, 2], [True, 2.0])), E.BAD_DATA),
        (body(tensor([1, 2], [None, 2.0])), E.BAD_DATA),
        (body(tensor([1, 2], [1.5, 2], "INT32")), E.BAD_DATA),
        (body(tensor([1, 2], [2**31, 2], "INT32")), E.BAD_DATA),
        (body(tensor([1, 2], [-1, 2], "UINT8")), E.BAD_DATA),
        (body(tensor([1, 2], [1e39, 2.0], "FP32")), E.BAD_DATA),
        (body(tensor([1, 2], [10**400, 2.0])), E.BAD_DATA),
        (body(tensor([1, 2], [10**309, 2])), E.BAD_DATA),
        (body(tensor([1, 2], [1, 0], "BOOL")), E.BAD_DATA),
        (body(tensor([1, 2], [1, 2], "BYTES")), E.BAD_DATA),
        (body(tensor([1, 2], [1, 2], "FP128")), E.BAD_DATATYPE),
        (body(tensor([1, 2], [1, 2], "fp64")), E.BAD_DATATYPE),
        # content types the gateway does not read
        (
            body(tensor([1], [1.0]), parameters={"content_type": "pd_json"}),
            E.UNSUPPORTED_CONTENT_TYPE,
        ),
        (
            body(tensor([1], [1.0]), parameters={"content_type": "base64"}),
            E.UNSUPPORTED_CONTENT_TYPE,
        ),
        (body(tensor([1], [1.0]), parameters={"content_type": None}), E.UNSUPPORTED_CONTENT_TYPE),
        (
            body(tensor([1], [1.0], parameters={"content_type": "pd_json"})),
            E.UNSUPPORTED_CONTENT_TYPE,
        ),
        (
            body(tensor([1], [1.0], parameters={"content_type": "custom"})),
            E.UNSUPPORTED_CONTENT_TYPE,
        ),
        (
            body(tensor([1], [1.0]), outputs=[{"name": "p", "parameters": {"content_type": "pd"}}]),
            E.UNSUPPORTED_CONTENT_TYPE,
        ),
        # string codecs: BYTES, one element per row
        (
            body(tensor([1, 2], ["a", "b"], "BYTES", parameters={"content_type": "str"})),
            E.BAD_SHAPE,
        ),
        (body(tensor([2], [1.0, 2.0], parameters={"content_type": "str"})), E.BAD_DATATYPE),
        (
            body(
                tensor([1], ["a"], "BYTES"),
                tensor([1], ["b"], "BYTES", name="y"),
                parameters={"content_type": "str"},
            ),
            E.BAD_INPUT,
        ),  # noqa: E501
        # parameters the gateway does not interpret
        (body(tensor([1], [1.0], parameters={"binary_data_size": 8})), E.BAD_PARAMETERS),
        (body(tensor([1], [1.0]), parameters=[1]), E.BAD_PARAMETERS),
        (body(tensor([1], [1.0]), parameters={f"p{i}": 1 for i in range(17)}), E.BAD_PARAMETERS),
        (body(tensor([1], [1.0]), parameters={"p" * 65: 1}), E.BAD_PARAMETERS),
        (body(tensor([1], [1.0]), parameters={"a b": 1}), E.BAD_PARAMETERS),
        # outputs
        (
            body(tensor([1], [1.0]), outputs=[{"name": f"o{i}"} for i in range(9)]),
            E.TOO_MANY_OUTPUTS,
        ),
        (body(tensor([1], [1.0]), outputs=[{"name": "p"}, {"name": "p"}]), E.DUPLICATE_NAME),
        (body(tensor([1], [1.0]), outputs=[1]), E.BAD_OUTPUTS),
        (body(tensor([1], [1.0]), outputs={"name": "p"}), E.BAD_OUTPUTS),
        (body(tensor([1], [1.0]), outputs=[{"name": "p", "x": 1}]), E.UNKNOWN_FIELD),
        # the document itself
        (body(), E.NO_INPUTS),
        ({"inputs": "x"}, E.NO_INPUTS),
        ({"nothing": 1}, E.UNKNOWN_FIELD),
        (body(tensor([1], [1.0]), id=5), E.BAD_ID),
        (body(tensor([1], [1.0]), extra=1), E.UNKNOWN_FIELD),
        (body(tensor([1], [1.0], extra=1)), E.UNKNOWN_FIELD),
        (body({"name": "x", "shape": [1]}), E.BAD_INPUT),
        (body(*(tensor([1], [1.0], name=f"i{i}") for i in range(257))), E.TOO_MANY_INPUTS),
        ([], E.NOT_OBJECT),
        ("inputs", E.NOT_OBJECT),
    ],
)
def test_what_the_gateway_cannot_read_unambiguously_is_invalid(
    request_body: Any, reason: BodyError
) -> None:
    got = read(request_body)
    assert not got.valid and got.rows == 0 and got.feature_rows() == ()
    assert got.reason is reason


def test_fp64_numbers_at_the_edges_of_the_range() -> None:
    assert read_body(fp64(b"1.7976931348623157e308, -1.7976931348623157e308")).valid
    assert read_body(fp64(b"-0, 5e-324")).valid


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        pytest.param(b"[" * 50_000, E.TOO_DEEP, id="50000-brackets"),
        pytest.param(b'{"a":' * 50_000, E.TOO_DEEP, id="50000-objects"),
        pytest.param(b'{"inputs": [' + b"[" * 50_000, E.TOO_DEEP, id="50000-in-inputs"),
        (b"{not json", E.NOT_JSON),
        pytest.param(
            b'{"inputs": [{"data": [' + b"9" * 5000 + b"]}]}", E.NOT_JSON, id="5000-digits"
        ),
        (b"", E.NOT_JSON),
        (b"\xff\xfe", E.NOT_JSON),
        pytest.param(fp64(b"1e400, -1e400"), E.BAD_DATA, id="inf-and-minus-inf"),
        pytest.param(fp64(b"-1e400, 1"), E.BAD_DATA, id="minus-inf"),
        pytest.param(fp64(b"1e308, 1e308"), E.BAD_DATA, id="sum-overflows"),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [NaN]}]}',
            E.NOT_JSON,
        ),
        (
            b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1e400]}]}',
            E.BAD_DATA,
        ),
        (  # a duplicate key: parsers disagree on which one wins
            b'{"inputs": [], "inputs": [{"name": "x", "shape": [1], "datatype": "FP64", '
            b'"data": [1]}]}',
            E.NOT_JSON,
        ),
    ],
)
def test_raw_bodies_never_raise(raw: bytes, reason: BodyError) -> None:
    got = read_body(raw)
    assert not got.valid and got.reason is reason


def test_deep_nesting_below_the_recursion_limit_is_still_refused() -> None:
    deep = {"inputs": [tensor([1], [1.0])]}
    for _ in range(200):
        deep = {"inputs": [tensor([1], [deep])]}
    assert read(deep).reason is E.BAD_DATA


def test_strings_are_one_element_per_row() -> None:
    got = read(body(tensor([2], ["a", "b"], "BYTES", parameters={"content_type": "str"})))
    assert got.valid and (got.rows, got.features) == (2, 1)
    assert got.parameters == ("content_type",) and got.feature_rows() == ()  # not numeric
    strs = tensor([3, 1], ["a", "b", "c"], "BYTES")
    single = read(body(strs, parameters={"content_type": "str"}))
    assert single.valid and single.rows == 3


def test_names_and_parameters_are_reported_sorted_and_bounded() -> None:
    got = read(
        body(
            tensor([1, 64], ROW, parameters={"content_type": "np"}),
            outputs=[
                {"name": "predict_proba", "parameters": {"content_type": "np"}},
                {"name": "predict"},
            ],
            parameters={"explain": True, "content_type": "np"},
            id="req-1",
        )
    )
    assert got.valid and got.content_type == "np"
    assert got.outputs == ("predict", "predict_proba")
    assert got.parameters == ("content_type", "explain")
    assert got.output_parameters == ("content_type",)


def test_null_optionals_read_as_absent() -> None:
    got = read(body(tensor([1], [1.0], parameters=None), outputs=None, parameters=None, id=None))
    assert got.valid and got.rows == 1


def test_datatypes_and_ranges() -> None:
    got = read(
        body(
            tensor([2], [True, False], "BOOL", name="b"),
            tensor([2], [0, 255], "UINT8", name="u"),
            tensor([2], [-(2**63), 2**63 - 1], "INT64", name="i"),
            tensor([2], [65504.0, -1], "FP16", name="h"),
        )
    )
    assert got.valid and got.datatypes == ("BOOL", "FP16", "INT64", "UINT8")
    assert (got.rows, got.features) == (2, 4)
    assert got.feature_rows()[0] == (1.0, 0.0, float(-(2**63)), 65504.0)


def test_feature_rows_are_bounded() -> None:
    rows = MAX_ROW_VALUES // 64 + 1
    got = read(body(tensor([rows, 64], ROW * rows)))
    assert got.valid and got.rows == rows and got.feature_rows() == ()
    assert len(got.feature_rows(limit=rows * 64)) == rows


def test_element_count_is_bounded_over_all_inputs() -> None:
    half = MAX_ELEMENTS // 2 + 1
    got = read(body(tensor([half], [0] * half), tensor([half], [0] * half, name="y")))
    assert got.reason is E.TOO_MANY_ELEMENTS
