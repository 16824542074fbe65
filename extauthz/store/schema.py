"""The Redis schema: every key and every hash field the service and its tools use, named once.

Keys are `ea:{<hash tag>}:<kind>:...`. Keys that one Lua call must read together share a hash
tag, so a call works on Redis Cluster:

- `{sub:<h>}`   a subject's own windows (`credential`, `subject`, and combinations with them),
                its risk hash, strike counter and quarantine, its devices and DPoP jtis
- `{key:<id>}`  an API key's record (the revocation check)
- `{pfx:<net>}` a source prefix's windows, failed-authentication counter and quarantine
- `{dev:<h>}`   a device's windows and quarantine
- `{proj:<h>}`, `{model:<name>}`  project- and model-wide windows

On a single Redis all of a decision's keys go into one call whatever their tags; on a cluster
the limiter makes one call per slot (limits/limiter.py).

Adding state: write a key function here (with its hash tag: which Lua call must see it beside
what?) and, for a hash, a `Fields` class below listing its fields; add the class to `_LUA` if
a Lua script reads or writes it, and write `${<prefix>_<field>}` in the script (rendered once
at load time by `render_lua`, so a script never spells a field itself). Streams are keys like
any other: a function here returning the stream's name. For example:

- a field of an existing hash: `DEGRADE = "degrade"` in `RiskFields`; check_and_consume.lua
  reads it as `${risk_degrade}` from the risk key it already has (no new key, same call);
- a stream written off the request path: `def query_stream() -> str: return "ea:queries"`
  (no Lua call reads it beside other keys, so its tag does not matter);
- one stream per writer: `def audit_stream(writer: str) -> str` returning
  `f"ea:{{audit:{writer}}}:log"` (its own tag: each writer's stream and chain head on one slot).
"""

from __future__ import annotations

import hashlib
import ipaddress
from functools import lru_cache
from string import Template
from typing import Any

from extauthz.types import Principal, Window

# Sub-buckets per window: a window of W seconds is counted in 20 buckets of W/20 (limiter.py,
# "Algorithm"). Every worker must agree on it, so it is a constant, not a setting.
SUB_BUCKETS = 20

# Windows keyed by these are the subject's own: scaled by its risk multiplier and counted as
# its strikes towards automatic quarantine.
OWN_DIMENSIONS = frozenset({"credential", "subject"})

# The tag prefix per credential kind; an API key's record lives at `ea:{key:<id>}:key`.
_TAG_PREFIX = {"api_key": "key"}
_SHORT = {
    "credential": "c",
    "subject": "s",
    "device": "d",
    "source_prefix": "n",
    "project": "p",
    "model": "m",
}


@lru_cache(maxsize=65536)
def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def subject_tag(subject: str) -> str:
    """The hash tag of everything keyed by a subject: its counters, its device records and its
    DPoP proof jtis, so one Lua call covers them all. Hashed: a subject may hold '}'."""
    return "sub:" + _h(subject)


def hash_tag(principal: Principal) -> str:
    """The identity of a credential: `key:<id>` for an API key, `sub:<h>` for tokens (quota per
    subject, not per token), `mtls:<id>` for a service identity."""
    if principal.rate_key:
        return principal.rate_key
    prefix = _TAG_PREFIX.get(principal.credential, principal.credential.replace("+", "_"))
    return f"{prefix}:{principal.credential_id}"


@lru_cache(maxsize=65536)
def source_prefix(address: str, v4_bits: int = 24, v6_bits: int = 56) -> str:
    """The network a client address belongs to for limiting: its IPv4 /24 or IPv6 /56 by
    default (an IPv4-mapped IPv6 address counts as IPv4); "unknown" for anything else."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = v4_bits if ip.version == 4 else v6_bits
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def prefix_tag(prefix: str) -> str:
    return f"pfx:{prefix}"


def device_tag(thumbprint: str) -> str:
    return "dev:" + _h(thumbprint)


def quarantine_key(tag: str) -> str:
    """The quarantine flag of a subject, device or prefix: a hash of QuarantineFields that
    expires with the quarantine."""
    return f"ea:{{{tag}}}:quarantine"


def risk_key(subject: str) -> str:
    """A subject's risk hash (RiskFields; limits of its own windows are multiplied by its
    multiplier)."""
    return f"ea:{{{subject_tag(subject)}}}:risk"


def strike_key(subject: str) -> str:
    """How often the subject ran over its own limits in the current strike period."""
    return f"ea:{{{subject_tag(subject)}}}:strikes"


def auth_failure_key(prefix: str, window: int) -> str:
    """Failed authentications from one source prefix: a sub-bucketed counter like a window's."""
    return f"ea:{{{prefix_tag(prefix)}}}:af:{window}"


def policy_denial_key(tag: str, window: int) -> str:
    """Policy denials of one subject (`sub:<h>`) or source prefix (`pfx:<net>`): a sub-bucketed
    counter like a window's, beside that tag's quarantine flag."""
    return f"ea:{{{tag}}}:pd:{window}"


THREAT_KEY = "ea:threat"  # the operator-set threat level: a hash of ThreatFields

DEVICE_INDEX = "ea:devices"  # a set of every device record's key (for `extauthz devices list`)
KEY_INDEX = "ea:keys"  # a set of every API key id (for `extauthz keys list`)


def key_record_name(key_id: str) -> str:
    """An API key's record (a hash of RecordFields and the key's own fields, authn/apikeys.py);
    its hash tag is shared with that key's counters."""
    return f"ea:{{key:{key_id}}}:key"


def device_record_name(subject: str, thumbprint: str) -> str:
    """A device enrollment's record (RecordFields and its own, authn/devices.py), under the
    subject's tag: the decision's one Lua call checks it beside the subject's windows."""
    return f"ea:{{{subject_tag(subject)}}}:dev:{thumbprint}"


def replay_key(subject: str, jkt: str, jti: str) -> str:
    """A DPoP proof's jti, set if absent in the decision's Lua call; the subject's hash tag."""
    digest = hashlib.sha256(f"{jkt} {jti}".encode()).hexdigest()[:32]
    return f"ea:{{{subject_tag(subject)}}}:jti:{digest}"


# ---- the audit trail (extauthz/audit/): one stream per writer, its last seq beside it (one
# tag: the append script reads both), and the set of every writer that ever shipped
AUDIT_WRITERS = "ea:{audit}:writers"  # a hash: writer id -> JSON of who started it


def audit_stream(writer: str) -> str:
    """A writer's chain: one entry per shipment, id `<first seq>-0`, fields r (lines), n."""
    return f"ea:{{audit:{writer}}}:log"


def audit_last(writer: str) -> str:
    """The last seq `audit_stream(writer)` holds (so the append never reads an entry back)."""
    return f"ea:{{audit:{writer}}}:last"


def audit_base(writer: str) -> str:
    """Where `audit_stream(writer)` now begins (`AuditBaseFields`): what was archived before it
    (extauthz/audit/archive.py); the same tag, so trimming and moving the base are one call."""
    return f"ea:{{audit:{writer}}}:base"


class AuditBaseFields:
    """A trimmed chain's anchor: the last archived record's seq and hash, the archive file it
    went to (name and SHA-256), when."""

    SEQ = "seq"
    HEAD = "head"
    FILE = "file"
    SHA256 = "sha256"
    TS = "ts"


RISK_PATTERN = "ea:{sub:*}:risk"  # SCAN patterns of the operator listings
QUARANTINE_PATTERN = "ea:{*}:quarantine"


# ---- behavioural analytics (extauthz/analytics/). Tenant keys share the subject's tag (beside
# the risk hash the decision's Lua call reads); each stream shard has its own tag (one slot per
# shard: several workers spread over a cluster); network counters carry the prefix's tag.
ANALYTICS_GROUP = "analytics"  # the consumer group of every shard stream
ANALYTICS_WORKERS_KEY = "ea:analytics:workers"  # zset worker id -> last heartbeat (ms)


def analytics_stream(shard: int) -> str:
    """One shard of the query stream (XADD MAXLEN ~ by the service, one owning worker)."""
    return f"ea:{{aq:{shard}}}:q"


def analytics_owner_key(shard: int) -> str:
    """Which worker owns a shard: its id, with a lease (PX) the owner renews."""
    return f"ea:{{aq:{shard}}}:owner"


def analytics_profile_key(model: str) -> str:
    """A model's reference profile (JSON), built from the sample its owner registered."""
    return f"ea:analytics:profile:{model}"


def analytics_tenant_key(subject: str) -> str:
    """What `extauthz analytics show` prints: a hash {subject, model:<m> (JSON), cleared_at}."""
    return f"ea:{{{subject_tag(subject)}}}:an"


def analytics_actions_key(subject: str) -> str:
    """The latest actions taken on a subject, newest first (a capped list of JSON)."""
    return f"ea:{{{subject_tag(subject)}}}:anact"


def analytics_network_key(prefix: str, minute: int) -> str:
    """Per source network and minute: a hash {n, flagged} over every subject in it."""
    return f"ea:{{{prefix_tag(prefix)}}}:an:{minute}"


def analytics_fingerprint_key(model: str, fingerprint: str, minute: int) -> str:
    """Distinct subjects that sent a flagged row of this fingerprint in a minute (HyperLogLog);
    tagged by the fingerprint's first byte, so they spread over a cluster."""
    return f"ea:{{afp:{fingerprint[:2]}}}:{model}:{fingerprint}:{minute}"


def analytics_network_subjects_key(prefix: str, minute: int) -> str:
    """Distinct subjects of a network in a minute (HyperLogLog)."""
    return f"ea:{{{prefix_tag(prefix)}}}:ans:{minute}"


# ---- hash fields. Each class names the fields of one kind of hash. (A window's counter,
# `counter_key`, and the failure counters are hashes of sub-bucket index → count: no fixed names.)


class RecordFields:
    """What the decision's state check reads of an API key's or a device's record."""

    STATUS = "status"
    ACTIVE = "active"  # the only status that passes
    REVOKED = "revoked"


class KeyFields(RecordFields):
    """An API key's record (`key_record_name`), besides its status (authn/apikeys.py)."""

    HASH = "hash"  # the keyed hash of the key; the key itself is never stored
    SUBJECT = "subject"
    ROLES = "roles"  # comma-separated
    PROJECTS = "projects"  # comma-separated
    TIER = "tier"
    CREATED = "created"
    EXPIRES = "expires"  # epoch s; 0: never
    CIDRS = "cidrs"  # comma-separated client networks; empty: anywhere
    ROTATED_FROM = "rotated_from"


class DeviceFields(RecordFields):
    """A device enrollment's record (`device_record_name`), besides its status."""

    SUBJECT = "subject"
    THUMBPRINT = "thumbprint"
    TRUST = "trust"
    CREATED = "created"
    EXPIRES = "expires"  # epoch s; 0: never
    JWK = "jwk"  # the public JWK (JSON)


class QuarantineFields:
    """A quarantine flag (`quarantine_key`): who or what, why, by whom, from and until when
    (epoch s). Written by the Lua scripts (automatic) and by `extauthz throttle quarantine`."""

    KIND = "kind"  # subject | device | prefix
    TARGET = "target"
    CAUSE = "cause"
    BY = "by"  # auto | cli | ...
    SET_AT = "set_at"
    UNTIL = "until"


class RiskFields:
    """A subject's risk hash (`risk_key`): its own windows' limits are multiplied by
    `multiplier`, and its answers are degraded to level `degrade` (0-3: none, scores rounded,
    top-1, labels only; shaping/plan.py), both read inside the decision's Lua call. The
    analytics worker and `extauthz throttle degrade` write `degrade` (HSET + EXPIRE: the hash
    expires as a whole, the latest write's TTL holds for both fields)."""

    MULTIPLIER = "multiplier"
    # output degradation written by the analytics worker: 0 none, 1 rounded scores, 2 top-1,
    # 3 labels only (enforced by the response-shaping filter, issue 13)
    DEGRADE = "degrade"
    SUBJECT = "subject"
    REASON = "reason"
    UNTIL = "until"
    DEGRADE = "degrade"
    DEGRADE_REASON = "degrade_reason"
    DEGRADE_UNTIL = "degrade_until"


class ThreatFields:
    """The threat level hash (`THREAT_KEY`), polled by every worker (threat.py)."""

    LEVEL = "level"
    REASON = "reason"
    BY = "by"
    UNTIL = "until"


def decode_hash(raw: dict[Any, Any]) -> dict[str, str]:
    """An HGETALL reply as text (clients may or may not decode responses)."""
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }


# The names a Lua script may use, `${prefix_field}` in lower case: `${quarantine_kind}`.
_LUA = {
    "record": RecordFields,
    "quarantine": QuarantineFields,
    "risk": RiskFields,
    "base": AuditBaseFields,
}


def lua_names() -> dict[str, str]:
    return {
        f"{prefix}_{name.lower()}": value
        for prefix, cls in _LUA.items()
        for name, value in vars(cls).items()
        if name.isupper()
    }


def render_lua(source: str) -> str:
    """A script's source with every `${name}` replaced by its field name (once, at load time:
    no cost per call). KeyError for a name the schema does not know."""
    return Template(source).substitute(lua_names())


def window_tag(dims: dict[str, str], key: tuple[str, ...]) -> str:
    """The hash tag a window's counter lives under: the subject's for its own windows, else the
    device's, the prefix's, the project's or the model's (the first of `key` in that order)."""
    if OWN_DIMENSIONS.intersection(key):
        return dims["subject_tag"]
    if "device" in key:
        return "dev:" + dims["device"]
    if "source_prefix" in key:
        return prefix_tag(dims["source_prefix"])
    if "project" in key:
        return "proj:" + dims["project"]
    return "model:" + dims["model"]


def counter_key(dims: dict[str, str], window: Window) -> str | None:
    """The counter of one window for this request, or None when the request has no value for
    one of its dimensions (a `device` window and no DPoP proof: the window does not apply)."""
    parts = []
    for name in window.key:
        value = dims.get(name, "")
        if not value:
            return None
        parts.append(f"{_SHORT[name]}={value}")
    tag = window_tag(dims, window.key)
    return f"ea:{{{tag}}}:rl:{window.name}:{window.window}:{','.join(parts)}"


def dimension_values(
    principal: Principal, source: str, model: str = "", project: str = ""
) -> dict[str, str]:
    """Each dimension's value for one request (values that go into key names are short and
    free of '{' and '}')."""
    return {
        "credential": hash_tag(principal),
        "subject": subject_tag(principal.subject),
        "subject_tag": subject_tag(principal.subject),
        "device": principal.device.thumbprint and _h(principal.device.thumbprint),
        "source_prefix": source,
        "project": project and _h(project),
        "model": model,
    }
