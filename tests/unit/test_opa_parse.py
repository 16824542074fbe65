import pytest

from extauthz.policy.opa import parse_decision
from extauthz.types import Denied, Reason, ResponsePlan, Status, Window


def test_allow_with_quota_and_headers() -> None:
    d = parse_decision(
        {
            "decision_id": "abc",
            "result": {
                "allow": True,
                "status": 200,
                "reason": "ok",
                "quota": [{"name": "minute", "limit": 5, "window": 60}],
                "headers": {"X-Extauthz-Tier": "trial"},
            },
        }
    )
    assert d.allow and d.status == 200 and d.decision_id == "abc"
    assert d.quota == (Window("minute", 5, 60),)
    assert d.headers == (("x-extauthz-tier", "trial"),)


def test_deny_keeps_reason_and_status() -> None:
    d = parse_decision({"result": {"allow": False, "status": 403, "reason": "project_mismatch"}})
    assert not d.allow and d.status == 403 and d.reason == "project_mismatch"


@pytest.mark.parametrize(
    "body",
    [
        {},  # undefined decision: policy not loaded
        {"result": True},
        {"result": {"allow": "yes"}},
        {"result": {"reason": "ok"}},
        {"result": {"allow": True, "quota": [{"name": "m", "limit": 5}]}},
        {"result": {"allow": True, "quota": [{"name": "m", "limit": 5, "window": 0}]}},
        {"result": {"allow": True, "quota": [{"name": "m", "limit": "x", "window": 1}]}},
        # a response plan outside the vocabulary: fail closed, never an unshaped answer
        {"result": {"allow": True, "response": {"top_k": 1}}},
        {"result": {"allow": True, "response": {"round": "2"}}},
        {"result": {"allow": True, "response": {"cache": "public"}}},
    ],
)
def test_malformed_decisions_fail_closed(body: dict) -> None:
    with pytest.raises(Denied) as info:
        parse_decision(body)
    assert info.value.status is Status.UNAVAILABLE
    assert info.value.reason is Reason.OPA_BAD_RESPONSE


def test_quota_windows_carry_their_key_dimensions_and_context() -> None:
    d = parse_decision(
        {
            "result": {
                "allow": True,
                "quota": [
                    {"name": "minute", "limit": 5, "window": 60},
                    {"name": "net", "limit": 30, "window": 60, "key": ["source_prefix"]},
                    {"name": "sm", "limit": 9, "window": 3600, "key": ["subject", "model"]},
                ],
                "quota_context": {
                    "project": "vision",
                    "fail_mode": "open",
                    "throttle": {"elevated": 0.5, "critical": 0.1},
                },
            }
        }
    )
    assert [w.key for w in d.quota] == [
        ("credential",),
        ("source_prefix",),
        ("subject", "model"),
    ]
    assert d.project == "vision" and d.fail_mode == "open"
    assert d.throttle == (("critical", 0.1), ("elevated", 0.5))


def test_no_quota_context_means_fail_closed_and_no_factors() -> None:
    d = parse_decision({"result": {"allow": True, "quota": []}})
    assert d.fail_mode == "closed" and d.throttle == () and d.project == ""


@pytest.mark.parametrize(
    "extra",
    [
        {"quota": [{"name": "m", "limit": 5, "window": 60, "key": []}]},
        {"quota": [{"name": "m", "limit": 5, "window": 60, "key": ["ip"]}]},
        {"quota": [{"name": "m", "limit": 5, "window": 60, "key": ["model", "model"]}]},
        {"quota": [{"name": "m", "limit": 5, "window": 60, "key": "credential"}]},
        {"quota_context": "vision"},
        {"quota_context": {"throttle": {"elevated": 2}}},
        {"quota_context": {"throttle": {"elevated": 0}}},
        {"quota_context": {"throttle": ["elevated"]}},
    ],
)
def test_a_malformed_quota_fails_closed(extra: dict) -> None:
    with pytest.raises(Denied) as info:
        parse_decision({"result": {"allow": True, **extra}})
    assert info.value.status is Status.UNAVAILABLE


def test_the_response_plan_is_parsed_once_with_the_decision() -> None:
    d = parse_decision(
        {"result": {"allow": True, "response": {"round": 2, "max_classes": 1, "cache": "no-store"}}}
    )
    assert d.plan == ResponsePlan(round=2, max_classes=1)
    assert d.response == (("cache", "no-store"), ("max_classes", 1), ("round", 2))
    public = parse_decision({"result": {"allow": True, "response": {"cache": "tenant"}}})
    assert not public.plan.shapes and public.plan.cache == "tenant"
