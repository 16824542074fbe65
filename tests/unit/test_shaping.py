"""extauthz/shaping/: the plan's vocabulary, its merge with the degradation level, the V2 body
rewrite, generic errors, and the ext_proc processor's answers (fed ProcessingRequests)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.struct_pb2 import Struct

from extauthz.handler import response_plan
from extauthz.shaping.body import ShapeError, generic_error, shape_response
from extauthz.shaping.plan import (
    NAMESPACE,
    from_metadata,
    merge_degrade,
    parse_hints,
    to_metadata,
)
from extauthz.shaping.processor import ShapingProcessor
from extauthz.types import (
    NO_PLAN,
    LimitResult,
    ModelRoute,
    PolicyDecision,
    Reason,
    RequestView,
    ResponsePlan,
)

# ------------------------------------------------------------------ the plan


def test_the_vocabulary_parses() -> None:
    plan = parse_hints(
        {"round": 2, "max_classes": 1, "labels_only": False, "drop_outputs": ["b", "a"]}
    )
    assert plan == ResponsePlan(round=2, max_classes=1, drop_outputs=("a", "b"))
    assert plan.shapes
    assert parse_hints({"cache": "tenant"}) == ResponsePlan(cache="tenant")
    assert not parse_hints({"cache": "tenant"}).shapes
    assert parse_hints({}) == NO_PLAN and NO_PLAN.cache == "no-store"


@pytest.mark.parametrize(
    "hints",
    [
        {"top_k": 1},
        {"round": 7},
        {"round": -1},
        {"round": 1.5},
        {"round": True},
        {"round": "2"},
        {"max_classes": 0},
        {"labels_only": 1},
        {"drop_outputs": "predict"},
        {"drop_outputs": ["_decoded"]},
        {"drop_outputs": [f"o{i}" for i in range(9)]},
        {"cache": "public"},
    ],
)
def test_anything_else_is_refused(hints: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_hints(hints)


@pytest.mark.parametrize(
    ("policy", "degrade", "expected"),
    [
        (NO_PLAN, 0, NO_PLAN),
        (NO_PLAN, 1, ResponsePlan(round=2)),
        (ResponsePlan(round=1), 1, ResponsePlan(round=1)),  # the policy's coarser rounding
        (ResponsePlan(round=4), 1, ResponsePlan(round=2)),
        (ResponsePlan(round=4), 2, ResponsePlan(round=2, max_classes=1)),
        (ResponsePlan(max_classes=3), 2, ResponsePlan(round=2, max_classes=1)),
        (NO_PLAN, 3, ResponsePlan(round=2, max_classes=1, labels_only=True)),
        (NO_PLAN, 9, ResponsePlan(round=2, max_classes=1, labels_only=True)),
        (
            ResponsePlan(drop_outputs=("x",), cache="tenant"),
            1,
            ResponsePlan(round=2, drop_outputs=("x",), cache="tenant"),
        ),
    ],
)
def test_the_stricter_of_policy_and_degrade_wins(
    policy: ResponsePlan, degrade: int, expected: ResponsePlan
) -> None:
    assert merge_degrade(policy, degrade) == expected


def test_the_metadata_round_trips_and_an_empty_plan_is_refused() -> None:
    plan = ResponsePlan(round=2, max_classes=1, drop_outputs=("x",))
    struct = Struct()
    struct.update(to_metadata(plan, "req-1", "dec-1"))
    shape = json.loads(json.dumps({k: v for k, v in struct["shape"].items()}, default=list))
    assert from_metadata(shape) == (plan, "req-1", "dec-1")
    with pytest.raises(ValueError):
        from_metadata({"labels_only": False, "request_id": "r"})


def _view(action: str) -> RequestView:
    return RequestView("r", "POST", "/", "h", "1.2.3.4", {}, ModelRoute("cancer", "", action))


def test_only_an_inference_answer_is_shaped_and_degrade_reaches_unplanned_models() -> None:
    planned = PolicyDecision(True, 200, "ok", plan=ResponsePlan(round=2, max_classes=1))
    ok = LimitResult(True, Reason.OK)
    assert response_plan(_view("infer"), planned, ok) == planned.plan
    assert not response_plan(_view("metadata"), planned, ok).shapes
    plain = PolicyDecision(True, 200, "ok", plan=ResponsePlan(cache="tenant"))
    degraded = LimitResult(True, Reason.OK, degrade=3)
    assert response_plan(_view("infer"), plain, degraded) == ResponsePlan(
        round=2, max_classes=1, labels_only=True, cache="tenant"
    )
    assert not response_plan(_view("ready"), plain, degraded).shapes


# ------------------------------------------------------------------ the body

PROBA = {"name": "predict_proba", "datatype": "FP64", "shape": [2, 3]}
ROWS = [0.1234, 0.5678, 0.3088, 0.7, 0.2, 0.1]
ANSWER = {
    "model_name": "m",
    "id": "x",
    "outputs": [
        {**PROBA, "data": ROWS, "parameters": {"content_type": "np"}},
        {"name": "predict", "datatype": "INT64", "shape": [2, 1], "data": [1, 0]},
    ],
}


def shaped(plan: ResponsePlan, answer: dict[str, Any] = ANSWER) -> dict[str, Any]:
    return json.loads(shape_response(json.dumps(answer).encode(), plan))


def test_round_touches_floating_point_outputs_only() -> None:
    out = shaped(ResponsePlan(round=1))
    assert out["outputs"][0]["data"] == [0.1, 0.6, 0.3, 0.7, 0.2, 0.1]
    assert out["outputs"][1] == ANSWER["outputs"][1]
    assert (out["model_name"], out["id"]) == ("m", "x")
    assert out["outputs"][0]["parameters"] == {"content_type": "np"}


def test_top_k_keeps_the_highest_scores_per_row_and_says_whose_they_are() -> None:
    out = shaped(ResponsePlan(round=2, max_classes=2))
    proba, classes, predict = out["outputs"]
    assert predict == ANSWER["outputs"][1]
    assert (proba["shape"], proba["data"]) == ([2, 2], [0.57, 0.31, 0.7, 0.2])
    assert classes == {
        "name": "predict_proba_classes",
        "datatype": "INT64",
        "shape": [2, 2],
        "data": [1, 2, 0, 1],
    }
    assert shaped(ResponsePlan(max_classes=3))["outputs"][0]["data"] == ROWS  # k >= classes


def test_labels_only_leaves_no_score() -> None:
    out = shaped(ResponsePlan(round=2, max_classes=1, labels_only=True))
    proba = out["outputs"][0]
    assert (proba["datatype"], proba["shape"], proba["data"]) == ("INT64", [2, 1], [1, 0])
    regression = {
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": [1.4, 151.7]}]
    }
    assert shaped(ResponsePlan(labels_only=True), regression)["outputs"][0]["data"] == [1.0, 152.0]


def test_named_outputs_are_dropped_and_nested_data_is_read_row_major() -> None:
    assert [
        o["name"] for o in shaped(ResponsePlan(drop_outputs=("predict_proba",)))["outputs"]
    ] == ["predict"]
    nested = {"outputs": [{**PROBA, "data": [ROWS[:3], ROWS[3:]]}]}
    assert shaped(ResponsePlan(max_classes=1), nested)["outputs"][0]["data"] == [0.5678, 0.7]


def test_scores_sent_as_text_are_refused_when_scores_are_shaped() -> None:
    text = {"outputs": [{"name": "p", "datatype": "BYTES", "shape": [1], "data": ["0.98765"]}]}
    for plan in (
        ResponsePlan(round=2),
        ResponsePlan(max_classes=1),
        ResponsePlan(labels_only=True),
    ):
        with pytest.raises(ShapeError):
            shaped(plan, text)
    assert shaped(ResponsePlan(drop_outputs=("q",)), text) == text  # nothing about scores


@pytest.mark.parametrize(
    "raw",
    [
        b"Internal Server Error",
        b"[]",
        b'{"outputs": {}}',
        json.dumps({"outputs": [{**PROBA, "data": ROWS[:5]}]}).encode(),
        json.dumps({"outputs": [{**PROBA, "data": ["a"] * 6}]}).encode(),
        json.dumps({"outputs": [{**PROBA, "datatype": "FP128", "data": ROWS}]}).encode(),
        json.dumps({"outputs": [{**PROBA, "shape": [2, -3], "data": ROWS}]}).encode(),
        json.dumps({"outputs": ["predict"]}).encode(),
    ],
)
def test_what_cannot_be_shaped_raises(raw: bytes) -> None:
    with pytest.raises(ShapeError):
        shape_response(raw, ResponsePlan(round=2))


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, (400, b'{"error":"bad_request"}')),
        (422, (400, b'{"error":"bad_request"}')),
        (404, (404, b'{"error":"not_found"}')),
        (413, (413, b'{"error":"payload_too_large"}')),
        (429, (429, b'{"error":"rate_limited"}')),
        (500, (503, b'{"error":"unavailable"}')),
        (502, (503, b'{"error":"unavailable"}')),
    ],
)
def test_model_server_errors_become_the_gateways_own(status: int, expected: Any) -> None:
    assert generic_error(status) == expected


# ------------------------------------------------------------------ the processor


class Log:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)


def headers(status: int, end: bool = False, plan: ResponsePlan | None = None, **extra: str):  # type: ignore[no-untyped-def]
    values = {":status": str(status), "content-type": "application/json", **extra}
    req = ProcessingRequest(
        response_headers=HttpHeaders(
            headers=HeaderMap(
                headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
            ),
            end_of_stream=end,
        )
    )
    if plan is not None:
        req.metadata_context.filter_metadata[NAMESPACE].update(to_metadata(plan, "req-9", "d-9"))
    return req


def body(raw: bytes, end: bool = True) -> ProcessingRequest:
    return ProcessingRequest(response_body=HttpBody(body=raw, end_of_stream=end))


def run(*requests: ProcessingRequest, max_body: int = 1 << 20) -> tuple[list[Any], Log]:
    log = Log()

    async def stream():  # type: ignore[no-untyped-def]
        for r in requests:
            yield r

    async def collect() -> list[ProcessingResponse]:
        proc = ShapingProcessor(log, max_body)  # type: ignore[arg-type]
        return [r async for r in proc.Process(stream(), None)]  # type: ignore[arg-type]

    return asyncio.run(collect()), log


PLAN = ResponsePlan(round=2, max_classes=1)
RAW = json.dumps(ANSWER).encode()


def set_headers(common: Any) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}


def test_a_2xx_answer_is_rewritten_with_its_length() -> None:
    (first, second), _ = run(headers(200, plan=PLAN), body(RAW))
    assert first.HasField("response_headers")
    common = second.response_body.response
    new = common.body_mutation.body
    assert json.loads(new) == shaped(PLAN)
    assert set_headers(common) == {
        "content-length": str(len(new)),
        "content-type": "application/json",
    }


def test_an_upstream_error_is_replaced_and_its_original_logged() -> None:
    responses, log = run(headers(500, plan=PLAN, **{"content-type": "text/plain"}), body(b"Oops"))
    immediate = responses[-1].immediate_response
    assert (immediate.status.code, immediate.body) == (503, b'{"error":"unavailable"}')
    (event,) = log.events
    assert (event["event"], event["request_id"], event["decision_id"]) == (
        "upstream_error",
        "req-9",
        "d-9",
    )
    assert (event["upstream_status"], event["upstream_body"]) == (500, "Oops")


def test_an_error_without_a_body_is_replaced_at_the_headers() -> None:
    (only,), log = run(headers(404, end=True, plan=PLAN))
    assert only.immediate_response.status.code == 404
    assert only.immediate_response.body == b'{"error":"not_found"}'
    assert log.events[0]["upstream_status"] == 404


@pytest.mark.parametrize(
    ("requests", "why"),
    [
        ((headers(200), body(RAW)), "no plan"),
        ((headers(200, plan=PLAN, **{"content-encoding": "gzip"}), body(RAW)), "compressed"),
        ((headers(200, plan=PLAN, **{"content-type": "text/html"}), body(RAW)), "not JSON"),
        ((headers(200, plan=PLAN), body(b"<html>")), "unparseable"),
        ((headers(200, plan=PLAN), body(RAW[:10], end=False)), "partial"),
        ((headers(200, end=True, plan=PLAN),), "no body"),
    ],
)
def test_anything_unshapeable_fails_closed_with_the_generic_503(
    requests: tuple[ProcessingRequest, ...], why: str
) -> None:
    responses, _ = run(*requests)
    last = responses[-1]
    assert last.HasField("immediate_response"), why
    assert (last.immediate_response.status.code, last.immediate_response.body) == (
        503,
        b'{"error":"unavailable"}',
    )


def test_an_answer_past_the_limit_is_refused_whole() -> None:
    responses, _ = run(headers(200, plan=PLAN), body(RAW), max_body=len(RAW) - 1)
    assert responses[-1].immediate_response.status.code == 503
    responses, _ = run(headers(200, plan=PLAN), body(RAW), max_body=len(RAW))
    assert responses[-1].HasField("response_body")


def test_policy_explain_shows_the_plan_the_service_derives() -> None:
    from extauthz.policy.tools import plan_of

    decision = {"allow": True, "response": {"round": 2, "max_classes": 1, "cache": "no-store"}}
    assert plan_of(decision) == {
        "shaped": True,
        "round": 2,
        "max_classes": 1,
        "labels_only": False,
        "drop_outputs": (),
        "cache": "no-store",
    }
    assert plan_of(decision, degrade=3)["labels_only"] is True
    assert plan_of(decision, action="metadata")["shaped"] is False
    assert plan_of({"allow": False})["shaped"] is False
