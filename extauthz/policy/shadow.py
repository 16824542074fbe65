"""Shadow (dry-run) policy: a candidate rule evaluated beside the enforced one on a sample of
traffic, after the decision and off its path. Disagreements are counted by both reasons and
written as JSON lines; the client only ever sees the enforced decision.

Bounded by bytes: inputs waiting for a comparison may hold at most `max_bytes` (of canonical
JSON) and at most `max_inflight` comparisons; past either, new ones are dropped (counted). The
log is rotated to `<log>.1` when it would pass `log_max_bytes`, so it holds at most twice that."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from extauthz.metrics import SHADOW, SHADOW_BYTES, SHADOW_DISAGREEMENTS
from extauthz.policy.cache import DecisionCache
from extauthz.policy.opa import OpaClient
from extauthz.types import Denied, PolicyDecision

log = logging.getLogger(__name__)


def _summary(d: PolicyDecision) -> dict[str, Any]:
    return {"allow": d.allow, "status": d.status, "reason": d.reason}


class Shadow:
    def __init__(
        self,
        opa: OpaClient,
        path: str,
        sample: float,
        log_path: Path,
        cache: DecisionCache,
        max_inflight: int = 64,
        max_bytes: int = 8 * 1024 * 1024,
        log_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._opa = opa
        self._path = path
        self._sample = sample
        self._log_path = log_path
        self._cache = cache
        self._max_inflight = max_inflight
        self._max_bytes = max_bytes
        self._log_max_bytes = log_max_bytes
        self.bytes = 0  # canonical-JSON bytes of the inputs waiting for a comparison
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()  # noqa: S311 - sampling, not security

    def submit(
        self,
        revision: str | None,
        key: bytes,
        policy_input: dict[str, Any],
        enforced: PolicyDecision,
        size: int,
    ) -> None:
        """Schedule a comparison of an input of `size` bytes (its canonical JSON); never
        blocks, never raises, drops when saturated by count or bytes."""
        if self._sample < 1.0 and self._random.random() >= self._sample:
            return
        if len(self._tasks) >= self._max_inflight or self.bytes + size > self._max_bytes:
            SHADOW.labels("dropped").inc()
            return
        self.bytes += size
        SHADOW_BYTES.set(self.bytes)
        task = asyncio.create_task(self._compare(revision, key, policy_input, enforced))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, size))

    def _done(self, task: asyncio.Task[None], size: int) -> None:
        self._tasks.discard(task)
        self.bytes -= size
        SHADOW_BYTES.set(self.bytes)

    async def _compare(
        self,
        revision: str | None,
        key: bytes,
        policy_input: dict[str, Any],
        enforced: PolicyDecision,
    ) -> None:
        try:
            candidate, _ = await self._cache.get(
                revision, key, lambda: self._opa.decide(policy_input, path=self._path)
            )
        except Denied:
            SHADOW.labels("error").inc()
            return
        if _summary(candidate) == _summary(enforced):
            SHADOW.labels("agree").inc()
            return
        SHADOW.labels("disagree").inc()
        SHADOW_DISAGREEMENTS.labels(enforced.reason, candidate.reason).inc()
        record = {
            "ts": round(time.time(), 3),
            "revision": revision,
            "enforced": _summary(enforced),
            "candidate": _summary(candidate),
            "input": policy_input,  # subject, roles, route, body facts: never a credential
        }
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            await asyncio.to_thread(self._append, line)
        except OSError as exc:
            log.warning("shadow log write failed: %s", exc)

    def _append(self, line: str) -> None:
        try:
            size = self._log_path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(line) > self._log_max_bytes:
            os.replace(self._log_path, self._log_path.with_name(self._log_path.name + ".1"))
        with open(self._log_path, "a") as f:
            f.write(line)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def summarize(log_path: Path) -> dict[str, Any]:
    """`extauthz policy diff`: disagreements by (enforced → candidate) reasons, with examples."""
    counts: dict[tuple[str, str], int] = {}
    examples: dict[tuple[str, str], dict[str, Any]] = {}
    total = 0
    for line in log_path.read_text().splitlines() if log_path.exists() else []:
        try:
            rec = json.loads(line)
            pair = (
                f"{'allow' if rec['enforced']['allow'] else 'deny'}:{rec['enforced']['reason']}",
                f"{'allow' if rec['candidate']['allow'] else 'deny'}:{rec['candidate']['reason']}",
            )
        except (ValueError, KeyError, TypeError):
            continue
        total += 1
        counts[pair] = counts.get(pair, 0) + 1
        examples.setdefault(pair, rec["input"])
    return {"total": total, "pairs": counts, "examples": examples}
