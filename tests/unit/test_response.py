import json
from dataclasses import replace

from extauthz.response import BODIES, build_response, ratelimit_headers
from extauthz.shaping.plan import from_metadata
from extauthz.types import (
    Decision,
    LimitResult,
    Reason,
    ResponsePlan,
    Status,
    Window,
    WindowState,
)


def headers_of(options) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {o.header.key: o.header.value for o in options}


def test_ok_sets_identity_and_removes_credentials_and_spoofed_headers() -> None:
    limits = LimitResult(True, Reason.OK, (WindowState(Window("minute", 5, 60), 4, 42),))
    decision = Decision(
        Status.OK,
        Reason.OK,
        "d1",
        limits=limits,
        upstream_headers=(("x-extauthz-subject", "alice"), ("x-extauthz-decision-id", "d1")),
    )
    request_headers = {
        "authorization": "Bearer eak_x",
        "x-api-key": "eak_y",
        "x-extauthz-subject": "admin",
        "x-extauthz-roles": "admin",
        "accept": "*/*",
    }
    resp = build_response(decision, request_headers)
    assert resp.status.code == 0
    ok = resp.ok_response
    assert headers_of(ok.headers) == {"x-extauthz-subject": "alice", "x-extauthz-decision-id": "d1"}
    # ours overwrite the client's; the client's other x-extauthz-* headers are removed
    assert all(o.append_action == o.OVERWRITE_IF_EXISTS_OR_ADD for o in ok.headers)
    assert set(ok.headers_to_remove) == {"authorization", "x-api-key", "x-extauthz-roles"}
    assert headers_of(ok.response_headers_to_add) == {
        "cache-control": "no-store",  # no plan from the policy: the strict default
        "vary": "authorization, x-api-key, dpop",
        "ratelimit-policy": '"minute";q=5;w=60',
        "ratelimit": '"minute";r=4;t=42',
    }
    assert not resp.HasField("dynamic_metadata")  # nothing to shape: Envoy skips ext_proc


def test_a_shaping_plan_goes_to_dynamic_metadata_and_public_models_are_cached_per_caller() -> None:
    plan = ResponsePlan(round=2, max_classes=1, cache="tenant")
    decision = Decision(Status.OK, Reason.OK, "d1", plan=plan)
    resp = build_response(decision, {"x-request-id": "r-1", "x-api-key": "eak_y"})
    shape = resp.dynamic_metadata["shape"]
    assert (shape["round"], shape["max_classes"], shape["labels_only"]) == (2, 1, False)
    assert (shape["request_id"], shape["decision_id"]) == ("r-1", "d1")
    assert from_metadata(dict(shape.items()))[0] == replace(plan, cache="no-store")
    assert headers_of(resp.ok_response.response_headers_to_add)["cache-control"] == "private"


def test_every_spelling_of_our_headers_and_of_credentials_is_removed() -> None:
    """Defence in depth behind Envoy's REJECT_REQUEST for underscores: a server that folds `_`
    into `-` (or ignores case) must never read a client's x_extauthz_subject as ours."""
    decision = Decision(
        Status.OK, Reason.OK, "d1", upstream_headers=(("x-extauthz-subject", "alice"),)
    )
    request_headers = {
        "x_extauthz_subject": "admin",
        "x-extauthz_roles": "admin",
        "X_EXTAUTHZ_DECISION_ID": "forged",
        "x_api_key": "eak_y",
        "accept": "*/*",
        "x_request_note": "kept",  # not ours, not a credential
    }
    ok = build_response(decision, request_headers).ok_response
    assert set(ok.headers_to_remove) == {
        "x_extauthz_subject",
        "x-extauthz_roles",
        "X_EXTAUTHZ_DECISION_ID",
        "x_api_key",
    }
    assert headers_of(ok.headers) == {"x-extauthz-subject": "alice"}


def test_denials_have_fixed_generic_bodies() -> None:
    for status, body in BODIES.items():
        resp = build_response(Decision(status, Reason.INTERNAL_ERROR, "d"), {})
        assert resp.status.code != 0
        denied = resp.denied_response
        assert denied.status.code == int(status)
        assert denied.body.encode() == body
        assert json.loads(denied.body) == {"error": status.name.lower()}
        assert headers_of(denied.headers)["content-type"] == "application/json"


def test_429_carries_retry_after_and_ratelimit() -> None:
    limits = LimitResult(
        False, Reason.RATE_LIMITED, (WindowState(Window("minute", 5, 60), 0, 17),), 17
    )
    resp = build_response(
        Decision(Status.RATE_LIMITED, Reason.RATE_LIMITED, "d", limits=limits), {}
    )
    hdrs = headers_of(resp.denied_response.headers)
    assert hdrs["retry-after"] == "17"
    assert hdrs["ratelimit"] == '"minute";r=0;t=17'
    assert resp.denied_response.body == '{"error":"rate_limited"}'


def test_401_says_bearer_and_nothing_more() -> None:
    resp = build_response(Decision(Status.UNAUTHENTICATED, Reason.KEY_REVOKED, "d"), {})
    assert headers_of(resp.denied_response.headers)["www-authenticate"] == "Bearer"
    assert "revoked" not in str(resp)


def test_ratelimit_headers_list_every_window() -> None:
    states = (
        WindowState(Window("second", 50, 1), 49, 1),
        WindowState(Window("minute", 1000, 60), 990, 30),
    )
    assert ratelimit_headers(states) == [
        ("ratelimit-policy", '"second";q=50;w=1, "minute";q=1000;w=60'),
        ("ratelimit", '"second";r=49;t=1, "minute";r=990;t=30'),
    ]
    assert ratelimit_headers(()) == []
