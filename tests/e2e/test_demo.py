"""`make demo` against the test stack: what it shows is what the gateway does."""

import re

import pytest

from extauthz.dev.demo import run_demo
from extauthz.dev.devstack import Stack

pytestmark = pytest.mark.e2e


def test_demo_shows_allowed_and_denied_requests(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_demo(stack) == 0
    out = capsys.readouterr().out
    expected = {
        "no credentials → digits": "401",
        "alice key (analyst, vision) → digits": "200",
        "alice key → cancer (clinical)": "403",
        "bob JWT + DPoP, managed device → diabetes": "200",
        "the same DPoP proof again (replay)": "401",
        "trial key, request 6 of 6 in a minute": "429",
    }
    for label, code in expected.items():
        assert re.search(rf"{re.escape(label)}\s+{code}\s", out), label
    assert re.search(
        r"bob key → diabetes \(restricted\)\s+policy_deny \(insufficient_assurance\)", out
    )
    assert re.search(r"the same DPoP proof again \(replay\)\s+dpop_replay", out)
    # digits has versions: the log names the one served
    assert re.search(r"alice key \(analyst, vision\) → digits\s+ok, model version v1", out)
    # the shaped answer: one score (the top class's), not the model's two
    shaped = re.search(
        r"cancer scores \(shaped: top-1, 2 dp\)\s+200\s+prediction \[([^\]]*)\]", out
    )
    assert shaped is not None, out
    assert len(shaped.group(1).split(",")) == 1
