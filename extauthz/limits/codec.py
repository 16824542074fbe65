"""A typed codec per Lua script: its arguments (KEYS and ARGV) and its reply as dataclasses, so
the order of KEYS and ARGV each script documents in its header is written down once, here.
Scripts are loaded with their field names rendered from the schema (store/schema.py). Pure:
no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from extauthz.store.schema import render_lua

Encoded = tuple[list[str], list[Any]]  # (KEYS, ARGV)


def load_script(name: str) -> str:
    """The source of `limits/lua/<name>`, with the schema's field names in it."""
    return render_lua(resources.files("extauthz.limits").joinpath("lua", name).read_text())


# ---- check_and_consume.lua: one decision's state check (or its part in one Cluster slot)

ADMITTED, FULL, INACTIVE, REPLAYED, BLOCKED = 1, 0, -1, -2, -3  # the reply's verdicts


@dataclass(slots=True)
class CheckWindow:
    key: str
    limit: int
    length_ms: int
    own: bool  # the subject's own window: scaled by its risk, a deny by it is a strike


@dataclass(slots=True)
class Strike:
    counter: str
    guard: str
    quarantine: str  # the subject's quarantine flag


@dataclass(slots=True)
class CheckArgs:
    now_ms: int
    state: list[str]  # records whose status must be active
    blocks: list[str]  # quarantine flags that must not exist
    singles: list[str]  # single-use keys (DPoP jtis)
    single_ttl_ms: int
    risk: str  # the subject's risk hash, "" when no own window is checked
    strike: Strike | None
    strikes: int  # strikes that quarantine
    strike_period_ms: int
    quarantine_ms: int
    subject: str  # recorded in a quarantine
    cause: str
    sub_buckets: int
    windows: list[CheckWindow]

    def encode(self) -> Encoded:
        keys = [*self.state, *self.blocks, *self.singles]
        if self.risk:
            keys.append(self.risk)
        if self.strike is not None:
            keys += (self.strike.counter, self.strike.guard, self.strike.quarantine)
        args: list[Any] = [
            self.now_ms,
            len(self.state),
            len(self.blocks),
            len(self.singles),
            self.single_ttl_ms,
            1 if self.risk else 0,
            1 if self.strike is not None else 0,
            self.strikes,
            self.strike_period_ms,
            self.quarantine_ms,
            self.subject,
            self.cause,
            self.sub_buckets,
        ]
        for w in self.windows:
            keys.append(w.key)
            args += (w.limit, w.length_ms, 1 if w.own else 0)
        return keys, args


@dataclass(slots=True)
class WindowReply:
    remaining: int
    reset_ms: int  # on a deny: until a request would be admitted; else until room comes back
    limit: int  # as the script applied it (scaled by the subject's risk)
    denied: bool


@dataclass(slots=True)
class CheckReply:
    verdict: int  # ADMITTED, FULL, INACTIVE, REPLAYED or BLOCKED
    index: int = 0  # INACTIVE, REPLAYED, BLOCKED: the 1-based index of the key among its kind
    ms: int = 0  # FULL: retry after; BLOCKED: the quarantine's remaining ms
    quarantined: bool = False  # FULL: this deny quarantined the subject
    windows: list[WindowReply] = field(default_factory=list)

    @classmethod
    def decode(cls, raw: list[Any]) -> CheckReply:
        verdict = int(raw[0])
        if verdict == FULL or verdict == ADMITTED:
            windows = [
                WindowReply(int(raw[j]), int(raw[j + 1]), int(raw[j + 2]), int(raw[j + 3]) == 1)
                for j in range(3, len(raw), 4)
            ]
            return cls(verdict, 0, int(raw[1]), int(raw[2]) == 1, windows)
        return cls(verdict, int(raw[1]), int(raw[2]) if verdict == BLOCKED else 0)


# ---- refund.lua: Cluster only, give back what one slot counted when another denied


@dataclass(slots=True)
class RefundArgs:
    counters: tuple[str, ...]
    buckets: tuple[int, ...]  # the sub-bucket each counter was counted in

    def encode(self) -> Encoded:
        return list(self.counters), list(self.buckets)


# ---- auth_failure.lua: a failed authentication counted against its source prefix


@dataclass(slots=True)
class AuthFailureArgs:
    counter: str
    flag: str  # the prefix's quarantine flag
    now_ms: int
    limit: int
    window_ms: int
    sub_buckets: int
    quarantine_ms: int
    prefix: str  # recorded in a quarantine
    cause: str

    def encode(self) -> Encoded:
        args: list[Any] = [
            self.now_ms,
            self.limit,
            self.window_ms,
            self.sub_buckets,
            self.quarantine_ms,
            self.prefix,
            self.cause,
        ]
        return [self.counter, self.flag], args


@dataclass(slots=True)
class AuthFailureReply:
    quarantined: bool
    value: int  # quarantined: its remaining ms; else failures counted in the window

    @classmethod
    def decode(cls, raw: list[Any]) -> AuthFailureReply:
        return cls(int(raw[0]) == 1, int(raw[1]))


# ---- policy_denial.lua: a policy denial counted against a subject and a source prefix


@dataclass(slots=True)
class DenialPair:
    counter: str
    flag: str  # the quarantine flag of the counter's tag
    limit: int
    kind: str  # subject | prefix
    target: str  # recorded in a quarantine


@dataclass(slots=True)
class PolicyDenialArgs:
    now_ms: int
    sub_buckets: int
    window_ms: int
    quarantine_ms: int
    cause: str
    pairs: tuple[DenialPair, ...]

    def encode(self) -> Encoded:
        keys: list[str] = []
        args: list[Any] = [
            self.now_ms,
            self.sub_buckets,
            self.window_ms,
            self.quarantine_ms,
            self.cause,
        ]
        for p in self.pairs:
            keys += (p.counter, p.flag)
            args += (p.limit, p.kind, p.target)
        return keys, args

    def split(self) -> list[PolicyDenialArgs]:
        """One call per pair (Redis Cluster: each pair shares its tag's slot)."""
        return [
            PolicyDenialArgs(
                self.now_ms, self.sub_buckets, self.window_ms, self.quarantine_ms, self.cause, (p,)
            )
            for p in self.pairs
        ]


@dataclass(slots=True)
class PolicyDenialReply:
    blocked: int  # the 1-based index of the first pair quarantined (now or before), 0: none
    ms: int  # its remaining quarantine ms

    @classmethod
    def decode(cls, raw: list[Any]) -> PolicyDenialReply:
        return cls(int(raw[0]), int(raw[1]))
