"""The quota plan and the Lua script codecs (limits/plan.py, limits/codec.py) and the schema's
rendering of field names into the scripts (store/schema.py). No Redis: the scripts' documented
KEYS/ARGV order and reply shapes are asserted on the encoded values."""

from __future__ import annotations

import re
from dataclasses import replace
from importlib import resources

import pytest
from redis.crc import key_slot

from extauthz.limits.codec import (
    ADMITTED,
    BLOCKED,
    FULL,
    INACTIVE,
    REPLAYED,
    AuthFailureArgs,
    AuthFailureReply,
    CheckReply,
    DenialPair,
    PolicyDenialArgs,
    PolicyDenialReply,
    RefundArgs,
    WindowReply,
    load_script,
)
from extauthz.limits.config import LimiterConfig
from extauthz.limits.plan import build_plan, by_slot, check_args, whole
from extauthz.store import schema
from extauthz.store.schema import (
    SUB_BUCKETS,
    QuarantineFields,
    RecordFields,
    RiskFields,
    device_tag,
    prefix_tag,
    quarantine_key,
    risk_key,
    strike_key,
    subject_tag,
)
from extauthz.types import Device, PolicyDecision, Principal, Reason, Window

ALICE = Principal("alice", (), ("vision",), "standard", "api_key", "k1", "ea:{key:k1}:key")
DEVICE = Device("thumb", "managed", "ea:{sub:x}:dev:thumb", "ea:{sub:x}:jti:j", 65)
QUOTA = (
    Window("minute", 10, 60),  # the credential's own
    Window("net", 100, 60, ("source_prefix",)),
    Window("dev", 7, 60, ("device",)),
)
NET = "203.0.113.0/24"


def decision(**kw: object) -> PolicyDecision:
    return PolicyDecision(True, 200, "ok", QUOTA, project="vision", **kw)  # type: ignore[arg-type]


# ---- the plan


def test_plan_names_every_key_of_a_decision() -> None:
    c = LimiterConfig()
    plan = build_plan(c, "normal", ALICE, QUOTA, NET, "digits", decision())
    assert plan.state == [("ea:{key:k1}:key", Reason.KEY_REVOKED)]
    assert plan.blocks == [
        (quarantine_key(subject_tag("alice")), "subject"),
        (quarantine_key(prefix_tag(NET)), "prefix"),
    ]
    assert plan.singles == [] and plan.risk == risk_key("alice")
    assert plan.strike is not None and plan.strike.counter == strike_key("alice")
    assert plan.strike.quarantine == plan.blocks[0][0]
    assert [(w.window.name, w.own) for w in plan.windows] == [("minute", True), ("net", False)]


def test_plan_with_a_device_checks_its_record_flag_and_proof() -> None:
    p = replace(ALICE, device=DEVICE)
    plan = build_plan(LimiterConfig(), "normal", p, QUOTA, NET, "digits", decision())
    assert plan.state[1] == (DEVICE.state_key, Reason.DEVICE_REVOKED)
    assert (quarantine_key(device_tag("thumb")), "device") in plan.blocks
    assert plan.singles == [DEVICE.replay_key] and plan.single_ttl_ms == 65_000
    assert [w.window.name for w in plan.windows] == ["minute", "net", "dev"]


def test_plan_without_own_windows_reads_no_risk_and_counts_no_strikes() -> None:
    quota = (Window("net", 100, 60, ("source_prefix",)),)
    plan = build_plan(LimiterConfig(), "normal", ALICE, quota, NET, "digits", decision())
    assert plan.risk == "" and plan.strike is None
    no_strikes = LimiterConfig(strikes=0)
    assert build_plan(no_strikes, "normal", ALICE, QUOTA, NET, "d", decision()).strike is None


@pytest.mark.parametrize(
    ("level", "throttle", "limits"),
    [
        ("normal", (), [10, 100]),
        ("high", (), [2, 25]),  # the settings' factor, 0.25, floored
        ("high", (("high", 0.5),), [5, 50]),  # the policy's factor for this model wins
        ("critical", (), [1, 10]),  # never below 1
    ],
)
def test_plan_scales_limits_by_the_threat_level(level, throttle, limits) -> None:  # type: ignore[no-untyped-def]
    plan = build_plan(
        LimiterConfig(), level, ALICE, QUOTA, NET, "digits", decision(throttle=throttle)
    )
    assert [w.window.limit for w in plan.windows] == limits


def test_by_slot_keeps_every_key_of_the_plan_and_one_slot_per_call() -> None:
    p = replace(ALICE, device=DEVICE)
    plan = build_plan(LimiterConfig(), "normal", p, QUOTA, NET, "digits", decision())
    calls = by_slot(plan)
    everything, _ = check_args(LimiterConfig(), plan, whole(plan), 0).encode()
    split = [k for call in calls for k in check_args(LimiterConfig(), plan, call, 0).encode()[0]]
    assert sorted(split) == sorted(everything)
    for call in calls:
        keys, _ = check_args(LimiterConfig(), plan, call, 0).encode()
        assert len({key_slot(k.encode()) for k in keys}) == 1


# ---- check_and_consume.lua


def test_check_args_follow_the_scripts_documented_order() -> None:
    c = LimiterConfig(strikes=3, strike_period=60, strike_quarantine=120)
    p = replace(ALICE, device=DEVICE)
    plan = build_plan(c, "normal", p, QUOTA, NET, "digits", decision())
    keys, args = check_args(c, plan, whole(plan), 1_000).encode()
    s = plan.strike
    assert s is not None
    assert keys == [
        "ea:{key:k1}:key",
        DEVICE.state_key,
        *(k for k, _ in plan.blocks),
        DEVICE.replay_key,
        risk_key("alice"),
        s.counter,
        s.guard,
        s.quarantine,
        *(w.key for w in plan.windows),
    ]
    assert args[:13] == [
        1_000,
        2,
        3,
        1,
        65_000,
        1,
        1,
        3,
        60_000,
        120_000,
        "alice",
        "strikes: over its limits 3 times in 60 s",
        SUB_BUCKETS,
    ]
    assert args[13:] == [10, 60_000, 1, 100, 60_000, 0, 7, 60_000, 0]


def test_check_args_flag_absent_risk_and_strike() -> None:
    quota = (Window("net", 100, 60, ("source_prefix",)),)
    plan = build_plan(LimiterConfig(), "normal", ALICE, quota, NET, "digits", decision())
    keys, args = check_args(LimiterConfig(), plan, whole(plan), 5).encode()
    assert args[5:7] == [0, 0]
    assert len(keys) == 1 + 2 + 1  # state, two flags, one window


def test_check_reply_decodes_every_verdict() -> None:
    admitted = CheckReply.decode([1, 0, 0, 9, 6000, 10, 0, 99, 6000, 100, 0])
    assert admitted.verdict == ADMITTED and not admitted.quarantined
    assert admitted.windows == [
        WindowReply(9, 6000, 10, False),
        WindowReply(99, 6000, 100, False),
    ]
    full = CheckReply.decode([0, 4200, 1, 0, 4200, 10, 1])
    assert (full.verdict, full.ms, full.quarantined) == (FULL, 4200, True)
    assert full.windows == [WindowReply(0, 4200, 10, True)]
    assert CheckReply.decode([-1, 2, 0]) == CheckReply(INACTIVE, 2)
    assert CheckReply.decode([-2, 1, 0]) == CheckReply(REPLAYED, 1)
    assert CheckReply.decode([-3, 3, 59_000]) == CheckReply(BLOCKED, 3, 59_000)
    # replies come back as ints or bytes depending on the client
    assert CheckReply.decode([b"1", b"0", b"0", b"4", b"10", b"5", b"0"]).windows[0].limit == 5


# ---- the source guard's scripts, and refunds


def test_auth_failure_codec() -> None:
    keys, args = AuthFailureArgs("c", "f", 1, 30, 60_000, 20, 300_000, NET, "why").encode()
    assert keys == ["c", "f"] and args == [1, 30, 60_000, 20, 300_000, NET, "why"]
    assert AuthFailureReply.decode([1, 299_000]) == AuthFailureReply(True, 299_000)
    assert AuthFailureReply.decode([0, 3]) == AuthFailureReply(False, 3)


def test_policy_denial_codec_and_its_split_per_pair() -> None:
    pairs = (
        DenialPair("c1", "f1", 60, "subject", "alice"),
        DenialPair("c2", "f2", 600, "prefix", NET),
    )
    call = PolicyDenialArgs(1, 20, 60_000, 900_000, "why", pairs)
    keys, args = call.encode()
    assert keys == ["c1", "f1", "c2", "f2"]
    assert args == [1, 20, 60_000, 900_000, "why", 60, "subject", "alice", 600, "prefix", NET]
    one, two = (c.encode() for c in call.split())
    assert one == (["c1", "f1"], [*args[:5], 60, "subject", "alice"])
    assert two == (["c2", "f2"], [*args[:5], 600, "prefix", NET])
    assert PolicyDenialReply.decode([2, 900_000]) == PolicyDenialReply(2, 900_000)


def test_refund_codec() -> None:
    assert RefundArgs(("a", "b"), (7, 8)).encode() == (["a", "b"], [7, 8])


# ---- the schema's field names in the scripts

LUA = ["check_and_consume.lua", "auth_failure.lua", "policy_denial.lua", "refund.lua"]


@pytest.mark.parametrize("name", LUA)
def test_scripts_render_with_no_placeholder_left(name: str) -> None:
    source = load_script(name)
    assert "${" not in source.replace("${kind_field}", "")


def test_scripts_spell_no_hash_field_themselves() -> None:
    """A field a script reads or writes comes from the schema: no literal left in the source."""
    fields = {
        *(v for k, v in vars(QuarantineFields).items() if k.isupper()),
        RecordFields.STATUS,
        RiskFields.MULTIPLIER,
    }
    for name in LUA:
        raw = resources.files("extauthz.limits").joinpath("lua", name).read_text()
        code = "\n".join(line.split("--")[0] for line in raw.splitlines())
        literals = set(re.findall(r"'([a-z_]+)'", code))
        assert not literals & fields, (name, literals & fields)


def test_rendered_scripts_carry_the_schemas_names() -> None:
    source = load_script("check_and_consume.lua")
    assert f"'{RecordFields.STATUS}') ~= '{RecordFields.ACTIVE}'" in source
    assert f"'{RiskFields.MULTIPLIER}'" in source
    assert f"'{QuarantineFields.SET_AT}'" in source


def test_an_unknown_name_in_a_script_fails_at_load() -> None:
    with pytest.raises(KeyError):
        schema.render_lua("redis.call('HGET', KEYS[1], '${quarantine_nope}')")
