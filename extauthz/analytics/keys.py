"""The Redis keys of analytics. Tenant-side keys share the subject's hash tag (`sub:<h>`), so
what the decision's Lua call reads (the risk hash) and what the worker writes beside it live
in one slot; stream shards and network counters carry their own tags.
"""

from __future__ import annotations

import zlib

from extauthz.limits.keys import prefix_tag, subject_tag

GROUP = "analytics"  # the consumer group every shard stream has
WORKERS_KEY = "ea:analytics:workers"  # zset worker id -> last heartbeat (ms)


def shard_of(subject: str, shards: int) -> int:
    """Every event of one subject goes to one shard (CRC32: stable across processes)."""
    return zlib.crc32(subject.encode()) % shards


def stream_key(shard: int) -> str:
    return f"ea:{{aq:{shard}}}:q"


def owner_key(shard: int) -> str:
    """Which worker owns a shard: its id, with a lease (PX) the owner renews."""
    return f"ea:{{aq:{shard}}}:owner"


def profile_key(model: str) -> str:
    """A model's reference profile (JSON), built from the sample its owner registered."""
    return f"ea:analytics:profile:{model}"


def tenant_key(subject: str) -> str:
    """What `extauthz analytics show` prints: a hash {scores, evidence, level, ...}."""
    return f"ea:{{{subject_tag(subject)}}}:an"


def actions_key(subject: str) -> str:
    """The latest actions taken on a subject, newest first (a capped list of JSON)."""
    return f"ea:{{{subject_tag(subject)}}}:anact"


def network_key(prefix: str, bucket: int) -> str:
    """Per source network and minute: a hash {n, flagged} over every subject in it."""
    return f"ea:{{{prefix_tag(prefix)}}}:an:{bucket}"


def network_subjects_key(prefix: str, bucket: int) -> str:
    """Distinct subjects of a network in a minute (HyperLogLog)."""
    return f"ea:{{{prefix_tag(prefix)}}}:ans:{bucket}"
