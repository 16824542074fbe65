"""The sticky bucket of a caller on a model (0-99): the policy picks a model version from it
(rego/extauthz/versions.rego), so one caller keeps seeing one version while the weights hold.

A keyed hash, not a plain one: without the key nobody can tell which subjects land on a canary
(or pick subject names that do). The key is derived from the API-key pepper, which every
worker of a deployment shares, so every worker puts a caller in the same bucket."""

from __future__ import annotations

import hashlib
import hmac

BUCKETS = 100


def bucket_key(pepper: bytes) -> bytes:
    """The bucket hash's key, derived from the deployment's pepper (never the pepper itself)."""
    return hmac.new(pepper, b"extauthz rollout bucket", hashlib.sha256).digest()


class StickyBucket:
    """(subject, model) -> 0..99, uniform and stable for one key: a keyed BLAKE2b (~1 us),
    remembered for the callers seen lately (a dict hit, ~0.1 us; README, "Model versions")."""

    __slots__ = ("_key", "_seen", "_size")

    def __init__(self, key: bytes, size: int = 65536) -> None:
        self._key = key
        self._seen: dict[tuple[str, str], int] = {}
        self._size = size

    def __call__(self, subject: str, model: str) -> int:
        found = self._seen.get((subject, model))
        if found is None:
            found = self.compute(subject, model)
            if len(self._seen) >= self._size:
                self._seen.clear()  # bounded; recomputing is cheap and gives the same answer
            self._seen[(subject, model)] = found
        return found

    def compute(self, subject: str, model: str) -> int:
        # \x00 cannot occur in either name, so ("ab", "c") and ("a", "bc") never collide
        data = f"{subject}\x00{model}".encode()
        digest = hashlib.blake2b(data, key=self._key, digest_size=8).digest()
        return int.from_bytes(digest, "big") % BUCKETS  # 2^64 % 100: bias below 1e-17
