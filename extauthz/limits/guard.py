"""The source guard: failures counted against the sources that cause them, off the decision's
state check. A source network that fails authentication too often (auth_failure.lua, on the 401
path) and a subject or network refused by the policy too often (policy_denial.lua, on the 403
path) is quarantined; a worker that knows of a quarantine answers 429 in-process, before
authentication (networks) or before OPA is asked (subjects)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from extauthz.clock import Clock
from extauthz.limits.codec import (
    AuthFailureArgs,
    AuthFailureReply,
    DenialPair,
    PolicyDenialArgs,
    PolicyDenialReply,
    load_script,
)
from extauthz.limits.config import LimiterConfig
from extauthz.limits.known import KnownState
from extauthz.limits.memory import OverLimitCache
from extauthz.limits.plan import quarantined
from extauthz.metrics import LIMITER_LOCAL, POLICY_DENIALS, QUARANTINES
from extauthz.store.schema import (
    SUB_BUCKETS,
    auth_failure_key,
    policy_denial_key,
    prefix_tag,
    quarantine_key,
    source_prefix,
    subject_tag,
)
from extauthz.types import Principal, RequestView


class SourceGuard:
    def __init__(
        self,
        redis: Any,
        timeout: float,
        clock: Clock,
        config: LimiterConfig,
        local: OverLimitCache,
        known: KnownState,
    ) -> None:
        self._timeout = timeout
        self._clock = clock
        self._config = config
        self._cluster = isinstance(redis, RedisCluster)
        self._auth_failure = redis.register_script(load_script("auth_failure.lua"))
        self._policy_denial = redis.register_script(load_script("policy_denial.lua"))
        self.local = local
        self.known = known

    def source_of(self, view: RequestView) -> str:
        c = self._config
        # view.source_ip is already the one client address (request.client_address)
        return source_prefix(view.source_ip, c.v4_bits, c.v6_bits)

    def precheck(self, view: RequestView) -> None:
        """Before authentication, in-process only: a source prefix this worker knows to be
        quarantined (e.g. for failed authentications) gets 429 without further work."""
        if not self.local:
            return
        now = self._clock()
        key = quarantine_key(prefix_tag(self.source_of(view)))
        until = self.local.until(key, now)
        if until is not None:
            LIMITER_LOCAL.labels("quarantine").inc()
            raise quarantined(until - now, "prefix (local)")

    async def auth_failed(self, view: RequestView) -> None:
        """A request failed authentication: count it for its source prefix (one Redis call on
        the 401 path only). Raises Denied(429) when the prefix is now quarantined."""
        c = self._config
        if c.auth_failure_limit <= 0:
            return
        now = self._clock()
        prefix = self.source_of(view)
        qkey = quarantine_key(prefix_tag(prefix))
        keys, args = AuthFailureArgs(
            counter=auth_failure_key(prefix, c.auth_failure_window),
            flag=qkey,
            now_ms=int(now * 1000),
            limit=c.auth_failure_limit,
            window_ms=c.auth_failure_window * 1000,
            sub_buckets=SUB_BUCKETS,
            quarantine_ms=c.auth_failure_quarantine * 1000,
            prefix=prefix,
            cause=f"auth_failures: more than {c.auth_failure_limit} in {c.auth_failure_window} s",
        ).encode()
        try:
            async with asyncio.timeout(self._timeout):
                reply = AuthFailureReply.decode(await self._auth_failure(keys=keys, args=args))
        except (RedisError, OSError, TimeoutError):
            return  # the 401 stands; counting is best effort
        if reply.quarantined:
            until = now + reply.value / 1000
            self.local.put(qkey, until, now)
            self.known.quarantine(qkey, until)
            QUARANTINES.labels("prefix").inc()
            raise quarantined(until - now, "prefix")

    def admit(self, principal: Principal) -> None:
        """Before the policy, in-process only: a subject this worker knows to be quarantined
        (e.g. for too many policy denials) gets 429 without an OPA query."""
        if not self.local:
            return
        now = self._clock()
        until = self.local.until(quarantine_key(subject_tag(principal.subject)), now)
        if until is not None:
            LIMITER_LOCAL.labels("quarantine").inc()
            raise quarantined(until - now, "subject (local)")

    async def policy_denied(self, view: RequestView, principal: Principal) -> None:
        """The policy refused a request: count it for the subject and the source prefix (one
        Redis call on the 403 path only). Raises Denied(429) when one of them is now (or
        already was) quarantined."""
        c = self._config
        pairs = []
        if c.policy_denial_limit > 0:
            tag = subject_tag(principal.subject)
            pairs.append((tag, c.policy_denial_limit, "subject", principal.subject))
        if c.policy_denial_prefix_limit > 0:
            prefix = self.source_of(view)
            pairs.append((prefix_tag(prefix), c.policy_denial_prefix_limit, "prefix", prefix))
        if not pairs:
            return
        now = self._clock()
        call = PolicyDenialArgs(
            now_ms=int(now * 1000),
            sub_buckets=SUB_BUCKETS,
            window_ms=c.policy_denial_window * 1000,
            quarantine_ms=c.policy_denial_quarantine * 1000,
            cause=f"policy_denials: more than the limit in {c.policy_denial_window} s",
            pairs=tuple(
                DenialPair(
                    policy_denial_key(tag, c.policy_denial_window),
                    quarantine_key(tag),
                    limit,
                    kind,
                    target,
                )
                for tag, limit, kind, target in pairs
            ),
        )
        try:
            async with asyncio.timeout(self._timeout):
                if self._cluster:  # one call per pair: each pair shares its tag's slot
                    replies = await asyncio.gather(*(self._deny(one) for one in call.split()))
                    hits = [(i + 1, r) for i, r in enumerate(replies) if r.blocked]
                    blocked, ms = (hits[0][0], hits[0][1].ms) if hits else (0, 0)
                else:
                    reply = await self._deny(call)
                    blocked, ms = reply.blocked, reply.ms
        except (RedisError, OSError, TimeoutError):
            POLICY_DENIALS.labels("error").inc()
            return  # the 403 stands; counting is best effort
        if not blocked:
            POLICY_DENIALS.labels("counted").inc()
            return
        pair = call.pairs[blocked - 1]
        kind, qkey = pair.kind, pair.flag
        until = now + ms / 1000
        self.local.put(qkey, until, now)
        self.known.quarantine(qkey, until)
        POLICY_DENIALS.labels("quarantined").inc()
        QUARANTINES.labels(kind).inc()
        raise quarantined(until - now, kind)

    async def _deny(self, call: PolicyDenialArgs) -> PolicyDenialReply:
        keys, args = call.encode()
        return PolicyDenialReply.decode(await self._policy_denial(keys=keys, args=args))
