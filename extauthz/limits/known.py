"""What a worker learned from Redis, so that the fallback limiter (Redis down, a fail-open
model) still refuses what Redis would: revoked keys and devices, quarantines, replayed DPoP
proofs. Every map is bounded (least recently set entries go first); forgetting only ever
makes the fallback refuse more (an unknown state is refused), never allow more, except for
quarantines and jtis, whose bound is large enough for their short lifetimes."""

from __future__ import annotations

from collections import OrderedDict


class _Bounded(OrderedDict[str, float]):
    def __init__(self, maxsize: int) -> None:
        super().__init__()
        self.maxsize = maxsize

    def put(self, key: str, value: float) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.maxsize:
            self.popitem(last=False)


class KnownState:
    def __init__(self, maxsize: int = 100_000) -> None:
        self.active = _Bounded(maxsize)  # state key -> when Redis last said "active"
        self.revoked = _Bounded(maxsize)  # state key -> when Redis said "not active"
        self.quarantined = _Bounded(maxsize)  # quarantine key -> until (epoch s)
        self.jtis = _Bounded(maxsize)  # replay key -> until (epoch s)
        # risk key -> the subject's last degradation level (response shaping); a forgotten one
        # is 0: the answer is shaped by the policy's plan alone
        self.degraded = _Bounded(maxsize)

    def confirm(self, key: str, now: float) -> None:
        self.revoked.pop(key, None)
        self.active.put(key, now)

    def revoke(self, key: str, now: float) -> None:
        self.active.pop(key, None)
        self.revoked.put(key, now)

    def quarantine(self, key: str, until: float) -> None:
        self.quarantined.put(key, until)

    def spend(self, jti_key: str, until: float) -> None:
        self.jtis.put(jti_key, until)

    def degrade(self, risk_key: str, level: int) -> None:
        if level:
            self.degraded.put(risk_key, level)
        else:
            self.degraded.pop(risk_key, None)

    def degrade_of(self, risk_key: str) -> int:
        return int(self.degraded.get(risk_key, 0))

    def quarantined_until(self, key: str, now: float) -> float | None:
        until = self.quarantined.get(key)
        return until if until is not None and until > now else None

    def is_active(self, key: str, now: float, max_age: float) -> bool | None:
        """True: confirmed active within max_age; False: known revoked; None: not known."""
        if key in self.revoked:
            return False
        seen = self.active.get(key)
        return True if seen is not None and now - seen <= max_age else None

    def replayed(self, jti_key: str, now: float) -> bool:
        until = self.jtis.get(jti_key)
        return until is not None and until > now
