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


def tensor(shape: list) -> dict:
    return {"name": "x", "shape": shape, "datatype": "FP64", "data": []}


def test_batch_outputs_and_parameters_are_read() -> None:
    got = facts(
        {
            "inputs": [tensor([3, 64]), tensor([5, 2])],
            "outputs": [{"name": "predict_proba"}, {"name": "predict"}, {"name": "predict"}],
            "parameters": {"content_type": "np", "explain": True},
        }
    )
    assert got == {
        "valid": True,
        "batch_size": 5,
        "inputs": 2,
        "outputs": ["predict", "predict_proba"],
        "parameters": ["content_type", "explain"],
    }


def test_scalar_shape_counts_as_one() -> None:
    assert facts({"inputs": [tensor([])]})["batch_size"] == 1


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
        {"inputs": [tensor(["3"])]},
        {"inputs": [tensor([-1])]},
        {"inputs": [{"name": "x"}]},
        {"inputs": [tensor([1])], "outputs": [1]},
        {"inputs": [tensor([1])], "parameters": [1]},
        {"nothing": 1},
        b"\xff\xfe",
    ],
)
def test_anything_else_is_invalid_and_never_raises(body: object) -> None:
    got = facts(body)
    assert got["valid"] is False and got["batch_size"] == 0


def test_non_infer_requests_have_no_body_facts() -> None:
    got = facts({"inputs": "ignored"}, path="/v2/models/digits", method="GET")
    assert got == {"valid": True, "batch_size": 0, "inputs": 0, "outputs": [], "parameters": []}


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
        b"not json",
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
