"""Graduated responses, written where the decision's single Redis call already reads them:

1. the subject's risk multiplier (`risk_key(subject)` field `multiplier`: its own windows'
   limits are multiplied by it in the Lua call);
2. output degradation, the same hash, integer field `degrade` (0 none, 1 rounded scores,
   2 top-1, 3 labels only), enforced by the response-shaping filter (issue 13);
3. a subject quarantine with a TTL (`ThrottleStore.quarantine`, by "analytics": a 429 like any
   other, never a distinctive denial).

Never loosens what is there: an operator's lower multiplier, higher degrade or longer TTL
stays. Every action goes to the decision log (one JSON line, kind "analytics_action", with its
scores and evidence) and to the tenant's record that `extauthz analytics show` prints.
"""

from __future__ import annotations

import os
import sys
import uuid
from typing import Any

import orjson

from extauthz.clock import Clock, system_clock
from extauthz.limits.throttle import ThrottleStore
from extauthz.store.schema import RiskFields as Risk
from extauthz.store.schema import analytics_actions_key as actions_key
from extauthz.store.schema import analytics_tenant_key as tenant_key
from extauthz.store.schema import decode_hash as _text
from extauthz.store.schema import quarantine_key, risk_key, subject_tag

KEEP_ACTIONS = 20


# Every key of a decision record (decisionlog.decision_record): an action line has them all
# (null where they do not apply), so a reader of the decision log sees one shape.
_DECISION_KEYS = (
    "ts decision_id request_id status reason policy_reason opa_decision_id policy_source "
    "policy_revision subject credential credential_id device_trust device method path model "
    "action source_ip retry_after detail duration_us worker"
).split()


class ActionLog:
    """Appends one line per action to the decision log ('-': stderr); actions are rare. The
    line is a decision record (reason "analytics_action" or "analytics_clear", a fresh
    decision_id, no request) plus the action's own fields."""

    def __init__(self, target: str = "-") -> None:
        self._target = target

    def write(self, record: dict[str, Any]) -> None:
        full = dict.fromkeys(_DECISION_KEYS)
        full.update(decision_id=uuid.uuid4().hex, reason=record["kind"], worker=os.getpid())
        full.update(record)
        line = orjson.dumps(full) + b"\n"
        if self._target == "-":
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
            return
        fd = os.open(self._target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(
                fd, line
            )  # one write of one line: appends from several processes interleave whole
        finally:
            os.close(fd)


class ActionStore:
    def __init__(
        self, redis: Any, log: ActionLog | None = None, clock: Clock = system_clock
    ) -> None:
        self._redis = redis
        self._throttle = ThrottleStore(redis, clock=clock)
        self._log = log or ActionLog()
        self._clock = clock

    async def apply(
        self,
        subject: str,
        model: str,
        response: dict[str, Any],
        scores: dict[str, float],
        evidence: dict[str, Any],
    ) -> dict[str, Any]:
        """Write one level's response; returns the action as logged."""
        now = int(self._clock())
        ttl = int(response["ttl"])
        key = risk_key(subject)
        current = _text(await self._redis.hgetall(key))
        multiplier = float(response["risk"])
        if current.get(Risk.MULTIPLIER):
            multiplier = min(multiplier, float(current[Risk.MULTIPLIER]))
        degrade = max(int(response["degrade"]), int(current.get(Risk.DEGRADE) or 0))
        until = max(now + ttl, int(current.get(Risk.UNTIL) or 0))
        reason = f"analytics level {response['level']}: {','.join(response.get('over', []))}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(
            key,
            mapping={
                Risk.MULTIPLIER: repr(multiplier),
                Risk.DEGRADE: str(degrade),
                Risk.SUBJECT: subject,
                Risk.REASON: reason,
                Risk.UNTIL: str(until),
            },
        )
        pipe.expire(key, max(1, until - now))
        await pipe.execute()
        quarantine = int(response.get("quarantine") or 0)
        if quarantine:
            await self._throttle.quarantine("subject", subject, quarantine, reason, by="analytics")
        action = {
            "ts": now,
            "kind": "analytics_action",
            "subject": subject,
            "model": model,
            "level": int(response["level"]),
            "risk": multiplier,
            "degrade": degrade,
            "quarantine": quarantine,
            "until": until,
            "over": list(response.get("over", [])),
            "strength": response.get("strength"),
            "scores": scores,
            "evidence": evidence,
        }
        pipe = self._redis.pipeline(transaction=False)
        pipe.lpush(actions_key(subject), orjson.dumps(action))
        pipe.ltrim(actions_key(subject), 0, KEEP_ACTIONS - 1)
        pipe.expire(actions_key(subject), 7 * 86400)
        await pipe.execute()
        self._log.write(action)
        return action

    async def record(
        self, subject: str, model: str, scores: dict[str, float], evidence: dict[str, Any]
    ) -> None:
        """The tenant's latest scores and evidence (what `show` prints), kept a day."""
        key = tenant_key(subject)
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(
            key,
            mapping={
                "subject": subject,
                f"model:{model}": orjson.dumps(
                    {"ts": int(self._clock()), "scores": scores, "evidence": evidence}
                ),
            },
        )
        pipe.expire(key, 86400)
        await pipe.execute()

    async def cleared_at(self, subject: str) -> int:
        raw = await self._redis.hget(tenant_key(subject), "cleared_at")
        return int(raw or 0)

    async def show(self, subject: str) -> dict[str, Any]:
        tenant = _text(await self._redis.hgetall(tenant_key(subject)))
        models = {
            k.removeprefix("model:"): orjson.loads(v)
            for k, v in tenant.items()
            if k.startswith("model:")
        }
        actions = [orjson.loads(a) for a in await self._redis.lrange(actions_key(subject), 0, -1)]
        risk = _text(await self._redis.hgetall(risk_key(subject)))
        quarantine = _text(await self._redis.hgetall(quarantine_key(subject_tag(subject))))
        return {
            "subject": subject,
            "models": models,
            "risk": risk,
            "quarantine": quarantine,
            "actions": actions,
            "cleared_at": int(tenant.get("cleared_at") or 0),
        }

    async def clear(self, subject: str, by: str = "cli") -> dict[str, Any]:
        """Undo every response on the subject and let the workers start its scores afresh."""
        now = int(self._clock())
        removed = {
            "risk": bool(await self._redis.delete(risk_key(subject))),
            "quarantine": await self._throttle.release("subject", subject),
            "actions": bool(await self._redis.delete(actions_key(subject))),
        }
        key = tenant_key(subject)
        await self._redis.delete(key)
        await self._redis.hset(key, mapping={"subject": subject, "cleared_at": str(now)})
        await self._redis.expire(key, 86400)
        self._log.write(
            {"ts": now, "kind": "analytics_clear", "subject": subject, "by": by, **removed}
        )
        return removed
