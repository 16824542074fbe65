"""Shadow (dry-run) policy: a candidate rule evaluated beside the enforced one on a sample of
traffic, after the decision and off its path. Disagreements are counted by both reasons and
written as JSON lines; the client only ever sees the enforced decision."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from pathlib import Path
from typing import Any

from extauthz.metrics import SHADOW, SHADOW_DISAGREEMENTS
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
    ) -> None:
        self._opa = opa
        self._path = path
        self._sample = sample
        self._log_path = log_path
        self._cache = cache
        self._max_inflight = max_inflight
        self._tasks: set[asyncio.Task[None]] = set()
        self._random = random.Random()  # noqa: S311 - sampling, not security

    def submit(
        self, revision: str | None, key: str, policy_input: dict[str, Any], enforced: PolicyDecision
    ) -> None:
        """Schedule a comparison; never blocks, never raises, drops when saturated."""
        if self._sample < 1.0 and self._random.random() >= self._sample:
            return
        if len(self._tasks) >= self._max_inflight:
            SHADOW.labels("dropped").inc()
            return
        task = asyncio.create_task(self._compare(revision, key, policy_input, enforced))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compare(
        self, revision: str | None, key: str, policy_input: dict[str, Any], enforced: PolicyDecision
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
