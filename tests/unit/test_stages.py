"""The stage Protocols (extauthz/stages.py) are the interface: the real stages and the unit-test
fakes must have exactly their signatures, so a fake cannot drift from what the handler calls."""

from __future__ import annotations

import inspect

import pytest

from extauthz import stages
from extauthz.authn.authenticator import Authenticator
from extauthz.decisionlog import DecisionLog
from extauthz.limits.limiter import Limiter
from extauthz.policy.engine import PolicyEngine
from extauthz.policy.opa import OpaClient
from tests.unit.test_engine import FakeOpa
from tests.unit.test_fuzz import BodyPolicy
from tests.unit.test_handler import FakeAuthn, FakeLimiter, FakeLog, FakePolicy

IMPLEMENTATIONS = [
    (stages.Authenticator, Authenticator),
    (stages.Authenticator, FakeAuthn),
    (stages.PolicyEngine, PolicyEngine),
    (stages.PolicyEngine, FakePolicy),
    (stages.PolicyEngine, BodyPolicy),
    (stages.PolicyQuery, OpaClient),
    (stages.PolicyQuery, FakeOpa),
    (stages.LimitStage, Limiter),
    (stages.LimitStage, FakeLimiter),
    (stages.DecisionLog, DecisionLog),
    (stages.DecisionLog, FakeLog),
]


def methods(protocol: type) -> list[str]:
    return [
        name
        for name, value in vars(protocol).items()
        if inspect.isfunction(value) and not name.startswith("_")
    ]


def test_every_stage_is_checked() -> None:
    assert {p for p, _ in IMPLEMENTATIONS} == set(stages.STAGES)
    assert all(methods(p) for p in stages.STAGES)


@pytest.mark.parametrize(
    ("protocol", "cls"), IMPLEMENTATIONS, ids=lambda x: getattr(x, "__qualname__", str(x))
)
def test_implementation_matches_its_protocol(protocol: type, cls: type) -> None:
    for name in methods(protocol):
        want = getattr(protocol, name)
        got = getattr(cls, name, None)
        assert got is not None, f"{cls.__qualname__} lacks {name}"
        assert inspect.signature(got) == inspect.signature(want), f"{cls.__qualname__}.{name}"
        assert inspect.iscoroutinefunction(got) == inspect.iscoroutinefunction(want), name


def test_a_drifted_fake_is_caught() -> None:
    class Drifted:
        async def check(self, principal, quota, view=None, policy=None):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    want = inspect.signature(stages.LimitStage.check)
    assert inspect.signature(Drifted.check) != want
