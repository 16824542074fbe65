"""Operator actions (keys, devices, quarantines, threat level, risk, policy) on their own chain.

The CLI appends each action straight to the `ops` stream: the action record, then a checkpoint
signing it, in one Lua call that adds both only if the stream's head is still the one the
records were chained to (another operator's action in between: read the head again, retry).
Who: the login (and `SUDO_USER`), or EXTAUTHZ_AUDIT_ACTOR; the host; the process.
"""

from __future__ import annotations

import getpass
import os
import time
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extauthz.audit.chain import GENESIS, Chain, key_id, record_hash
from extauthz.audit.sink import OPS_WRITER, WRITERS_KEY, stream_key

_APPEND = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local top = 0
if #last > 0 then top = tonumber(string.match(last[1][1], '^(%d+)-')) end
if top ~= tonumber(ARGV[1]) then return top end
redis.call('XADD', KEYS[1], ARGV[2], 'r', ARGV[3])
redis.call('XADD', KEYS[1], ARGV[4], 'r', ARGV[5])
return -1
"""


def actor(configured: str = "") -> dict[str, Any]:
    """Who acts: the configured name, else the login; with the host and process."""
    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = f"uid:{os.getuid()}"
    who: dict[str, Any] = {"user": configured or login, "login": login}
    if os.environ.get("SUDO_USER"):
        who["sudo_user"] = os.environ["SUDO_USER"]
    who["host"] = os.uname().nodename
    who["pid"] = os.getpid()
    return who


def operator_record(
    action: str, target: str, outcome: str, details: dict[str, Any], who: dict[str, Any]
) -> dict[str, Any]:
    """What, to what, with which result, by whom, when. Never a secret: callers pass ids."""
    return {
        "kind": "operator",
        "ts": round(time.time(), 6),
        "action": action,
        "target": target,
        "outcome": outcome,
        "details": details,
        "actor": who,
    }


async def append_operator_action(
    redis: Any, key: Ed25519PrivateKey, record: dict[str, Any], attempts: int = 20
) -> int:
    """Chain `record` and a checkpoint onto the ops stream; its seq."""
    stream = stream_key(OPS_WRITER)
    kid = key_id(key.public_key())
    for _ in range(attempts):
        last = await redis.xrevrange(stream, "+", "-", count=1)
        seq, head = 0, GENESIS
        if last:
            entry_id, fields = last[0]
            seq = int(
                (entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0]
            )
            head = record_hash(fields[b"r"] if b"r" in fields else fields["r"])
        chain = Chain(OPS_WRITER, seq, head)
        line = chain.link(orjson.dumps(record))
        checkpoint = chain.checkpoint(key, kid)
        result = await redis.eval(
            _APPEND, 1, stream, seq, f"{seq + 1}-0", line, f"{seq + 2}-0", checkpoint
        )
        if int(result) == -1:
            await redis.hsetnx(WRITERS_KEY, OPS_WRITER, orjson.dumps({"since": record["ts"]}))
            return seq + 1
    raise RuntimeError("the ops audit stream kept moving; action not audited")
