"""Stage 3: the policy decision — input, revision-keyed cache, OPA, fail-open, shadow."""

from __future__ import annotations

from dataclasses import replace

from extauthz.metrics import DEGRADED, FAIL_OPEN
from extauthz.policy.cache import DecisionCache, canonical_input, input_digest
from extauthz.policy.input import build_input
from extauthz.policy.revision import RevisionWatcher
from extauthz.policy.rollout import StickyBucket
from extauthz.policy.shadow import Shadow
from extauthz.stages import PolicyQuery
from extauthz.types import Denied, PolicyDecision, Principal, RequestView, Status


class PolicyEngine:
    def __init__(
        self,
        opa: PolicyQuery,
        watcher: RevisionWatcher,
        cache: DecisionCache,
        shadow: Shadow | None = None,
        bucket: StickyBucket | None = None,
    ) -> None:
        self._opa = opa
        self._watcher = watcher
        self._cache = cache
        self._shadow = shadow
        self._bucket = bucket  # the caller's sticky bucket per model (model versions)
        self._last_revision: str | None = None  # the last one OPA confirmed (fail-open)

    async def decide(self, view: RequestView, principal: Principal) -> PolicyDecision:
        model = view.route.name
        bucket = self._bucket(principal.subject, model) if model and self._bucket else 0
        policy_input = build_input(view, principal, bucket)
        # The input holds nothing volatile: its canonical JSON's digest is the cache key.
        canonical = canonical_input(policy_input)
        key = input_digest(policy_input, canonical)
        revision = self._watcher.current()
        if revision is not None:
            self._last_revision = revision
        try:
            decision, how = await self._cache.get(
                revision, key, lambda: self._opa.decide(policy_input)
            )
        except Denied as denied:
            if denied.status is Status.UNAVAILABLE:
                fallback = self._fail_open(view, key)
                if fallback is not None:
                    return fallback
            raise
        if self._shadow is not None:
            self._shadow.submit(revision, key, policy_input, decision, len(canonical))
        source = "cache" if how in ("hit", "shared") else "opa"
        return replace(
            decision,
            decision_id=decision.decision_id if source == "opa" else "",
            source=source,
            revision=revision or "",
        )

    def _fail_open(self, view: RequestView, key: bytes) -> PolicyDecision | None:
        """OPA is unreachable. A model the policy marked fail-open (public, `fail_mode: open`,
        listed in its fallback table) is answered with the decision OPA itself made for the
        identical input (same principal, roles, projects, tier, credential, device trust,
        source address, model, action and body facts) under the last revision it confirmed.
        Every check OPA ran still holds for that input; anything it has not seen: 503."""
        actions = self._watcher.fallback.open_models.get(view.route.name, frozenset())
        if view.route.action not in actions:
            DEGRADED.labels("opa", "not_fail_open").inc()
            return None
        found = None
        if self._last_revision is not None:
            found = self._cache.peek(self._last_revision, key)
        if found is None:
            DEGRADED.labels("opa", "unknown_input").inc()
            return None
        decision, _ = found
        FAIL_OPEN.inc()
        DEGRADED.labels("opa", "served" if decision.allow else "denied").inc()
        revision = self._last_revision or ""
        return replace(decision, source="fail_open", decision_id="", revision=revision)
