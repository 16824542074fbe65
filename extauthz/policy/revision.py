"""Which policy OPA is running: a digest of its loaded modules and its `extauthz` data tree,
polled in the background. The decision cache is keyed on it, so an edit picked up by OPA
(`--watch`) reaches the next decisions within one poll interval.

The same poll brings the policy's fail-open table (`data.extauthz.authz.fallback`), so the
service knows, while OPA is down, which public models the policy lets it serve."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from extauthz.clock import Clock
from extauthz.metrics import REVISION_CHANGES
from extauthz.periodic import Periodic
from extauthz.policy.opa import OpaClient, parse_window
from extauthz.types import Denied, Window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fallback:
    """What the policy allows while OPA cannot be asked (decided in Rego, cached here)."""

    open_models: dict[str, frozenset[str]] = field(default_factory=dict)  # model → actions
    tiers: dict[str, tuple[Window, ...]] = field(default_factory=dict)

    @classmethod
    def from_policy(cls, doc: object) -> Fallback:
        if not isinstance(doc, dict):
            return cls()
        models = {
            str(m): frozenset(str(a) for a in actions)
            for m, actions in (doc.get("open_models") or {}).items()
        }
        tiers = {
            str(name): tuple(parse_window(w) for w in windows)
            for name, windows in (doc.get("tiers") or {}).items()
        }
        return cls(open_models=models, tiers=tiers)


class RevisionWatcher(Periodic):
    _task_name = "policy-revision"

    def __init__(
        self,
        opa: OpaClient,
        interval: float,
        max_age: float,
        data_root: str = "extauthz",
        clock: Clock = time.monotonic,
    ) -> None:
        self._opa = opa
        self._interval = interval
        self._max_age = max_age
        self._data_path = f"/v1/data/{data_root}"
        self._clock = clock
        self._revision: str | None = None
        self._confirmed_at = float("-inf")
        self.fallback = Fallback()
        # told of every revision OPA loads (the audit trail records policy edits through it)
        self.on_change: Callable[[dict[str, Any]], None] | None = None
        self._digests: dict[str, str] = {}

    def current(self) -> str | None:
        """The revision, if confirmed within max_age; None means: do not trust the cache."""
        if self._clock() - self._confirmed_at > self._max_age:
            return None
        return self._revision

    async def poll_once(self) -> str | None:
        try:
            policies = await self._opa.get("/v1/policies")
            data = await self._opa.get(self._data_path)
        except Denied as exc:
            log.debug("revision poll failed: %s", exc)
            return None
        try:
            # Canonical forms only: OPA lists modules in map order (it varies under --watch),
            # and the data response carries a per-request decision_id.
            # orjson: /v1/policies carries every module's AST too (≈60 KB), 4 times a second
            modules = {m["id"]: m["raw"] for m in orjson.loads(policies)["result"]}
            doc = orjson.loads(data).get("result", {})
            canonical = orjson.dumps([modules, doc], option=orjson.OPT_SORT_KEYS)
        except (ValueError, AttributeError, KeyError, TypeError):
            log.warning("revision poll: OPA returned a malformed document")
            return None
        revision = hashlib.sha256(canonical).hexdigest()[:16]
        if revision != self._revision:
            if self._revision is not None:
                log.info("policy revision %s -> %s", self._revision, revision)
            REVISION_CHANGES.inc()
            try:
                self.fallback = Fallback.from_policy(doc.get("authz", {}).get("fallback"))
            except (ValueError, AttributeError, KeyError, TypeError):
                self.fallback = Fallback()
            self._tell(revision, modules, doc)
            self._revision = revision
        self._confirmed_at = self._clock()
        return revision

    def _tell(self, revision: str, modules: dict[str, str], doc: object) -> None:
        """Which modules and whether the data changed, for `on_change` (never raises)."""
        if self.on_change is None:
            return
        digests = {m: hashlib.sha256(raw.encode()).hexdigest()[:16] for m, raw in modules.items()}
        digests["data:extauthz"] = hashlib.sha256(
            orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()[:16]
        old = self._digests
        self._digests = digests
        try:
            self.on_change(
                {
                    "kind": "policy",
                    "ts": round(time.time(), 6),
                    "action": "policy.revision",
                    "from": self._revision,
                    "to": revision,
                    "added": sorted(digests.keys() - old.keys()),
                    "removed": sorted(old.keys() - digests.keys()),
                    "changed": sorted(
                        m for m in digests.keys() & old.keys() if digests[m] != old[m]
                    ),
                    "digests": digests,
                    "actor": {"source": "opa (policy and data files it watches)"},
                }
            )
        except Exception:
            log.exception("policy revision: on_change failed")
