"""The red-team caller's reading of what the gateway shows (bench/redteam/client.py)."""

import json

from bench.redteam.client import (
    actions,
    decode_outputs,
    first_action,
    parse_policy,
    parse_state,
)


def test_ratelimit_headers_are_read_per_window() -> None:
    policy = parse_policy('"second";q=50;w=1, "minute";q=1000;w=60, "bad";q=x')
    assert policy == {"second": (50, 1), "minute": (1000, 60)}
    assert parse_state('"minute";r=3;t=41') == {"minute": (3, 41)}


def _body(*outputs: dict) -> bytes:
    return json.dumps({"outputs": list(outputs)}).encode()


def test_exact_scores_and_labels() -> None:
    labels, proba = decode_outputs(
        _body(
            {"name": "predict", "shape": [2, 1], "data": [3, 1]},
            {"name": "predict_proba", "shape": [2, 3], "data": [0.1, 0.2, 0.7, 0.6, 0.3, 0.1]},
        ),
        2,
        3,
    )
    assert labels == [3, 1] and proba == [[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]]


def test_top1_answer_becomes_a_full_vector_and_labels_only_no_scores() -> None:
    top1 = _body(
        {"name": "predict", "shape": [1, 1], "data": [2]},
        {"name": "predict_proba", "shape": [1, 1], "data": [0.8]},
        {"name": "predict_proba_classes", "shape": [1, 1], "data": [2]},
    )
    labels, proba = decode_outputs(top1, 1, 5)
    assert labels == [2]
    assert proba is not None and proba[0][2] == 0.8 and abs(sum(proba[0]) - 1) < 1e-9
    labels_only = _body(
        {"name": "predict", "shape": [1, 1], "data": [2]},
        {"name": "predict_proba", "datatype": "INT64", "shape": [1, 1], "data": [2]},
    )
    assert decode_outputs(labels_only, 1, 5) == ([2], None)


def test_first_action_is_the_earliest_in_time_across_callers() -> None:
    records = [
        {"t": 2.0, "q_total": 40, "q0": 20, "status": 200, "degraded": True},
        {"t": 1.0, "q_total": 30, "q0": 30, "status": 200, "probe": {"multiplier": 1.0}},
        {"t": 3.0, "q_total": 50, "q0": 25, "status": 429, "probe": {"quarantined": True}},
    ]
    assert first_action(records) == (40, "degraded", 2.0)
    assert actions(records[2]) == ["quarantine"]
    assert actions({"t": 0, "q0": 0, "status": 429}) == ["429"]
    assert first_action(records[1:2]) is None
