"""The hash chain of one audit writer, and its Ed25519-signed checkpoints.

A record is one JSON line (no newline in the hashed bytes) that begins with its chain fields:

    {"w":"<writer>","seq":<n>,"prev":"<sha256 hex of record n-1>",...the record's own fields}

Record 1's `prev` is 64 zeros. A checkpoint is a record of the same chain whose `sig` signs
`checkpoint_message(writer, seq, prev, ts)`: the writer's chain up to seq-1 has head `prev`. So
every record before a checkpoint is covered by its signature; one changed byte anywhere breaks a
link or a signature. Hashing and signing happen on the writer's thread, never on the request path.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

GENESIS = "0" * 64
_CHECKPOINT_DOMAIN = b"extauthz-audit-checkpoint-v1"


def record_hash(line: bytes) -> str:
    """The hash the next record's `prev` carries: SHA-256 of the line without its newline."""
    return hashlib.sha256(line).hexdigest()


def checkpoint_message(writer: str, seq: int, prev: str, ts: float) -> bytes:
    return b"|".join(
        (_CHECKPOINT_DOMAIN, writer.encode(), b"%d" % seq, prev.encode(), repr(ts).encode())
    )


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_hex(public: Ed25519PublicKey) -> str:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key as 64 hex characters (the `.pub` file next to the signing key) or PEM."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        key = load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return key
    return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))


def _parse_private(text: str) -> Ed25519PrivateKey:
    text = text.strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(seed) != 32:
        raise ValueError("an Ed25519 signing key is a 32-byte seed (hex or base64url)")
    return Ed25519PrivateKey.from_private_bytes(seed)


def load_signing_key(secret: str, path: Path, create: bool = True) -> Ed25519PrivateKey:
    """The setting if given, else the 0600 file at `path` (created on first use, with the public
    key beside it as `<path>.pub`). The key is never logged."""
    if secret:
        return _parse_private(secret)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no audit signing key at {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        seed = key.private_bytes_raw().hex()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # a sibling worker made it first: read theirs below
        else:
            with os.fdopen(fd, "w") as f:
                f.write(seed)
            pub = path.with_name(path.name + ".pub")
            pub.write_text(public_hex(key.public_key()) + "\n")
    for _ in range(50):  # a sibling may be between creating the file and writing it
        text = path.read_text().strip()
        if text:
            return _parse_private(text)
        time.sleep(0.02)
    raise ValueError(f"empty audit signing key file {path}")


@dataclass
class Chain:
    """One writer's chain head. Not thread-safe: one thread appends."""

    writer: str
    seq: int = 0  # the last record's
    head: str = GENESIS  # the last record's hash

    def __post_init__(self) -> None:
        self._prefix = b'{"w":' + orjson.dumps(self.writer) + b',"seq":'

    def link(self, record: bytes) -> bytes:
        """Chain one JSON object (bytes `{...}`, no newline) and return its line (no newline)."""
        self.seq += 1
        line = b'%s%d,"prev":"%s",%s' % (self._prefix, self.seq, self.head.encode(), record[1:])
        if record == b"{}":
            line = line[:-2] + b"}"
        self.head = hashlib.sha256(line).hexdigest()
        return line

    def checkpoint(self, key: Ed25519PrivateKey, kid: str, **extra: object) -> bytes:
        """A signed checkpoint over the current head, appended to the chain (its line)."""
        ts = round(time.time(), 6)
        sig = key.sign(checkpoint_message(self.writer, self.seq + 1, self.head, ts))
        body = {
            "kind": "checkpoint",
            "ts": ts,
            "head_seq": self.seq,
            "kid": kid,
            "sig": base64.b64encode(sig).decode(),
            **extra,
        }
        return self.link(orjson.dumps(body))
