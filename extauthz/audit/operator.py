"""Operator actions (keys, devices, quarantines, threat level, risk, policy) on their own chain.

The CLI appends each action straight to the `ops` stream: the action record and a checkpoint
signing it, as one entry, in one Lua call that adds it only if the stream's head is still the
one the records were chained to (another operator's action in between: read it again, retry).
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
from extauthz.audit.sink import (
    APPEND_LUA,
    OPS_WRITER,
    WRITERS_KEY,
    append_keys,
    entry_last_seq,
    stream_key,
)


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
            seq = entry_last_seq(entry_id, fields)
            lines = (fields.get(b"r") or fields.get("r")).splitlines()
            head = record_hash(lines[-1])
        chain = Chain(OPS_WRITER, seq, head)
        data = chain.link(orjson.dumps(record)) + b"\n" + chain.checkpoint(key, kid) + b"\n"
        keys = append_keys(OPS_WRITER)
        if int(await redis.eval(APPEND_LUA, 2, *keys, seq + 1, data, 2)) == -1:
            await redis.hsetnx(WRITERS_KEY, OPS_WRITER, orjson.dumps({"since": record["ts"]}))
            return seq + 1
    raise RuntimeError("the ops audit stream kept moving; action not audited")
