"""The OPA client against the real OPA of the test stack, loaded with rego/."""

from __future__ import annotations

import pytest

from extauthz.dev.devstack import Stack
from extauthz.policy.opa import OpaClient
from extauthz.types import Denied, Reason, Status, Window

pytestmark = pytest.mark.integration


def policy_input(
    subject: str, roles: list[str], projects: list[str], model: str, tier: str = "standard"
):  # type: ignore[no-untyped-def]
    return {
        "request": {
            "method": "POST",
            "path": f"/v2/models/{model}/infer",
            "model": model,
            "version": "",
            "action": "infer",
            "source_ip": "127.0.0.1",
            "body": {"valid": True, "batch_size": 1, "inputs": 1, "outputs": [], "parameters": []},
        },
        "principal": {
            "subject": subject,
            "roles": roles,
            "projects": projects,
            "tier": tier,
            "credential": "api_key",
        },
    }


@pytest.fixture
async def opa(stack: Stack):  # type: ignore[no-untyped-def]
    client = OpaClient(stack.settings.opa_url, stack.settings.opa_decision_path, timeout=2)
    await client.start()
    yield client
    await client.close()


async def test_alice_may_use_digits_with_her_tier_quota(opa: OpaClient) -> None:
    d = await opa.decide(policy_input("alice", ["analyst"], ["vision"], "digits", tier="trial"))
    assert d.allow and d.reason == "ok"
    assert d.quota == (
        Window("minute", 5, 60, ("credential",)),
        Window("trial_network_minute", 30, 60, ("source_prefix",)),
    )
    # what the limiter needs beyond the windows, decided by the policy too
    assert d.project == "vision" and d.fail_mode == "closed"
    assert dict(d.throttle) == {"elevated": 0.5, "high": 0.25, "critical": 0.1}


async def test_a_public_fail_open_model_may_use_the_fallback_limiter(opa: OpaClient) -> None:
    d = await opa.decide(policy_input("alice", ["analyst"], ["vision"], "iris"))
    assert d.allow and d.fail_mode == "open" and d.project == "demo"


async def test_alice_may_not_use_cancer(opa: OpaClient) -> None:
    d = await opa.decide(policy_input("alice", ["analyst"], ["vision"], "cancer"))
    assert not d.allow and d.status == 403 and d.reason == "project_mismatch"


async def test_bob_may_use_cancer(opa: OpaClient) -> None:
    d = await opa.decide(policy_input("bob", ["clinician"], ["clinical"], "cancer"))
    assert d.allow


async def test_unknown_model(opa: OpaClient) -> None:
    d = await opa.decide(policy_input("bob", ["clinician"], ["clinical"], "nope"))
    assert not d.allow and d.reason == "unknown_model"


async def test_opa_unreachable_fails_closed() -> None:
    client = OpaClient("http://127.0.0.1:1", "extauthz/authz/decision", timeout=0.2)
    await client.start()
    with pytest.raises(Denied) as info:
        await client.decide(policy_input("a", [], [], "digits"))
    await client.close()
    assert info.value.status is Status.UNAVAILABLE and info.value.reason is Reason.OPA_UNAVAILABLE


async def test_undefined_decision_path_fails_closed(stack: Stack) -> None:
    client = OpaClient(stack.settings.opa_url, "extauthz/nothing/here", timeout=2)
    await client.start()
    with pytest.raises(Denied) as info:
        await client.decide(policy_input("a", [], [], "digits"))
    await client.close()
    assert info.value.reason is Reason.OPA_BAD_RESPONSE
