"""Stage 3: the policy decision — input, revision-keyed cache, OPA, fail-open, shadow."""

from __future__ import annotations

import json
from dataclasses import replace

from extauthz.metrics import FAIL_OPEN
from extauthz.policy.cache import DecisionCache
from extauthz.policy.input import build_input
from extauthz.policy.opa import OpaClient
from extauthz.policy.revision import RevisionWatcher
from extauthz.policy.shadow import Shadow
from extauthz.types import Denied, PolicyDecision, Principal, RequestView, Status


class PolicyEngine:
    def __init__(
        self,
        opa: OpaClient,
        watcher: RevisionWatcher,
        cache: DecisionCache,
        shadow: Shadow | None = None,
    ) -> None:
        self._opa = opa
        self._watcher = watcher
        self._cache = cache
        self._shadow = shadow

    async def decide(self, view: RequestView, principal: Principal) -> PolicyDecision:
        policy_input = build_input(view, principal)
        # The input holds nothing volatile; its JSON is the cache key (dict order is fixed).
        key = json.dumps(policy_input, separators=(",", ":"))
        revision = self._watcher.current()
        try:
            decision, how = await self._cache.get(
                revision, key, lambda: self._opa.decide(policy_input)
            )
        except Denied as denied:
            if denied.status is Status.UNAVAILABLE:
                fallback = self._fail_open(view, principal)
                if fallback is not None:
                    return fallback
            raise
        if self._shadow is not None:
            self._shadow.submit(revision, key, policy_input, decision)
        source = "cache" if how in ("hit", "shared") else "opa"
        return replace(
            decision,
            decision_id=decision.decision_id if source == "opa" else "",
            source=source,
            revision=revision or "",
        )

    def _fail_open(self, view: RequestView, principal: Principal) -> PolicyDecision | None:
        """OPA is unreachable: serve only what the policy itself marked fail-open (public
        models whose catalog entry says `fail_mode: open`), with the caller's tier quota."""
        fallback = self._watcher.fallback
        quota = fallback.tiers.get(principal.tier)
        actions = fallback.open_models.get(view.route.name, frozenset())
        if view.route.action not in actions or quota is None:
            return None
        FAIL_OPEN.inc()
        return PolicyDecision(
            allow=True,
            status=200,
            reason="fail_open",
            quota=quota,
            source="fail_open",
            fail_mode="open",  # the fallback table lists only fail_mode: open models
        )
