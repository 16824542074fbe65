import json

import pytest

from extauthz.policy.input import body_facts, build_input
from extauthz.request import parse_check_request
from extauthz.types import Principal
from tests.unit.checkrequests import check_request

ALICE = Principal("alice", ("analyst",), ("vision",), "standard", "api_key", "k1")


def facts(body: object, path: str = "/v2/models/digits/infer", method: str = "POST") -> dict:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return body_facts(parse_check_request(check_request(method, path, body=raw), 1 << 20))


def tensor(shape: list, data: list | None = None) -> dict:
    n = 1
    for dim in shape:
        n *= dim
    return {
        "name": "x",
        "shape": shape,
        "datatype": "FP64",
        "data": [0.5] * n if data is None else data,
    }


NO_BODY = {
    "valid": True,
    "reason": "ok",
    "content_type": "",
    "batch_size": 0,
    "features": 0,
    "inputs": 0,
    "datatypes": [],
    "outputs": [],
    "parameters": [],
    "output_parameters": [],
}


def test_rows_outputs_and_parameters_are_read() -> None:
    second = {**tensor([5, 2]), "name": "y", "parameters": {"content_type": "np"}}
    got = facts(
        {
            "inputs": [tensor([5, 64]), second],
            "outputs": [
                {"name": "predict_proba", "parameters": {"content_type": "np"}},
                {"name": "predict"},
            ],
            "parameters": {"content_type": "np", "explain": True},
        }
    )
    assert got == {
        "valid": True,
        "reason": "ok",
        "content_type": "np",
        "batch_size": 5,
        "features": 66,
        "inputs": 2,
        "datatypes": ["FP64"],
        "outputs": ["predict", "predict_proba"],
        "parameters": ["content_type", "explain"],
        "output_parameters": ["content_type"],
    }


def test_pandas_rows_are_what_the_model_runs() -> None:
    """Issue 11: the policy saw shape[0] = 1 while MLServer's pandas codec ran len(data) rows."""
    pd = {"parameters": {"content_type": "pd"}}
    bypass = facts({"inputs": [tensor([1, 64], [0.5] * 484)], **pd})
    assert bypass["valid"] is False and bypass["reason"] == "shape_mismatch"
    column = facts({"inputs": [tensor([484])], **pd})
    assert column["valid"] is True and column["batch_size"] == 484
    assert column["content_type"] == "pd" and column["features"] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            {"inputs": [{**tensor([1, 64]), "parameters": {"_decoded_payload": [[0] * 64] * 500}}]},
            "private_parameter",
        ),
        ({"inputs": [tensor([1, 64], [0.5] * 63)]}, "shape_mismatch"),
        pytest.param(b"[" * 50_000, "too_deep", id="50000-brackets"),
        ({"inputs": [tensor([1, 2], ["a", "b"])]}, "bad_data"),
        ({"inputs": [tensor([1]), tensor([2])]}, "duplicate_name"),
    ],
)
def test_bypasses_of_issue_11_are_invalid_with_a_reason(body: object, reason: str) -> None:
    got = facts(body)
    assert got == {**NO_BODY, "valid": False, "reason": reason}


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[]",
        b'"inputs"',
        {"inputs": []},
        {"inputs": "x"},
        {"inputs": [1]},
        {"inputs": [tensor(["3"], [0.5] * 3)]},
        {"inputs": [tensor([-1], [])]},
        {"inputs": [tensor([])]},
        {"inputs": [{"name": "x"}]},
        {"inputs": [tensor([1])], "outputs": [1]},
        {"inputs": [tensor([1])], "parameters": [1]},
        {"nothing": 1},
        b"\xff\xfe",
    ],
)
def test_anything_else_is_invalid_and_never_raises(body: object) -> None:
    got = facts(body)
    assert got["valid"] is False and got["batch_size"] == 0 and got["reason"] != "ok"


def test_non_infer_requests_have_no_body_facts() -> None:
    got = facts({"inputs": "ignored"}, path="/v2/models/digits", method="GET")
    assert got == NO_BODY


def test_input_has_nothing_volatile() -> None:
    """Two requests that differ only in request id, other headers and credentials build
    byte-identical inputs: the decision cache relies on it."""
    a = check_request(
        headers={"x-api-key": "k1", "x-request-id": "1"},
        request_id="1",
        body=json.dumps({"inputs": [tensor([1, 64])]}).encode(),
    )
    b = check_request(
        headers={"x-api-key": "k2", "x-request-id": "2", "user-agent": "x"},
        request_id="2",
        body=json.dumps({"inputs": [tensor([1, 64])]}).encode(),
    )
    dump = [json.dumps(build_input(parse_check_request(r, 4096), ALICE)) for r in (a, b)]
    assert dump[0] == dump[1]
    assert "k1" not in dump[0] and "x-request-id" not in dump[0]
    doc = json.loads(dump[0])
    assert doc["schema_version"] == 1
    assert set(doc) == {"schema_version", "request", "principal"} | ({"device"} & set(doc))


def test_the_documented_schema_matches_what_is_built() -> None:
    import jsonschema

    from extauthz.dev.devstack import ROOT

    schema = json.loads((ROOT / "rego" / "input.schema.json").read_text())
    bodies = [
        {"inputs": [tensor([2, 64])], "outputs": [{"name": "predict_proba"}]},
        {"inputs": [tensor([3])], "parameters": {"content_type": "pd"}},
        b"not json",
        b"[" * 50_000,
    ]
    for body in bodies:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        for method, path in [
            ("POST", "/v2/models/digits/infer"),
            ("GET", "/v2/models/x"),
            ("GET", "/"),
        ]:
            view = parse_check_request(check_request(method, path, body=raw), 4096)
            jsonschema.validate(build_input(view, ALICE), schema)
