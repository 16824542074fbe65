"""The Redis key schema of rate-limit counters: `ea:{<hash tag>}:rl:<window>:<length>:<bucket>`.

Every key one Lua call touches shares the hash tag of the identity it limits, so the call
works on Redis Cluster.
"""

from __future__ import annotations

import hashlib

from extauthz.types import Principal, Window

# The tag prefix per credential kind; an API key's counters share the slot of its record
# (`ea:{key:<id>}:key`), so the revocation check rides in the same call.
_TAG_PREFIX = {"api_key": "key"}


def subject_tag(subject: str) -> str:
    """The hash tag of everything keyed by a token subject: its counters, its device records
    and its DPoP proof jtis, so one Lua call covers them all. Hashed: a subject may hold '}'."""
    return "sub:" + hashlib.sha256(subject.encode()).hexdigest()[:16]


def hash_tag(principal: Principal) -> str:
    if principal.rate_key:
        return principal.rate_key
    prefix = _TAG_PREFIX.get(principal.credential, principal.credential.replace("+", "_"))
    return f"{prefix}:{principal.credential_id}"


def counter_keys(tag: str, window: Window, now_ms: int) -> tuple[str, str]:
    """(current bucket, previous bucket) counter keys of one window."""
    length_ms = window.window * 1000
    bucket = now_ms // length_ms
    base = f"ea:{{{tag}}}:rl:{window.name}:{window.window}"
    return f"{base}:{bucket}", f"{base}:{bucket - 1}"
