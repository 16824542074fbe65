"""LimiterConfig: what the limiter, its plan and its source guard are told by settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_THREAT_FACTORS = {"elevated": 0.5, "high": 0.25, "critical": 0.1}


@dataclass(frozen=True)
class LimiterConfig:
    """The limiter's settings (settings.py has each one's description)."""

    v4_bits: int = 24
    v6_bits: int = 56
    auth_failure_limit: int = 30  # per source prefix and auth_failure_window; 0: not counted
    auth_failure_window: int = 60
    auth_failure_quarantine: int = 300
    strikes: int = 10  # a subject over its own limits this often ...; 0: no auto-quarantine
    strike_period: int = 600  # ... within this many seconds ...
    strike_quarantine: int = 900  # ... is quarantined this long
    local_cache_size: int = 100_000
    local_cache_max_age: float = 2.0
    threat_factors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THREAT_FACTORS))
    fallback_size: int = 100_000
    fallback_max_age: float = 60.0  # a key/device seen active longer ago: refused in fallback
    single_worker: bool = True  # only then is this worker's memory of DPoP jtis complete
    policy_denial_limit: int = 60  # per subject and policy_denial_window; 0: not counted
    policy_denial_prefix_limit: int = 600  # per source prefix; 0: not counted
    policy_denial_window: int = 60
    policy_denial_quarantine: int = 60

    @classmethod
    def from_settings(cls, s: Any) -> LimiterConfig:
        from extauthz.limits.throttle import parse_factors

        return cls(
            v4_bits=s.source_prefix_v4,
            v6_bits=s.source_prefix_v6,
            auth_failure_limit=s.auth_failure_limit,
            auth_failure_window=s.auth_failure_window,
            auth_failure_quarantine=s.auth_failure_quarantine,
            strikes=s.quarantine_strikes,
            strike_period=s.quarantine_strike_period,
            strike_quarantine=s.quarantine_ttl,
            local_cache_size=s.overlimit_cache_size,
            local_cache_max_age=s.overlimit_cache_max_age,
            threat_factors=parse_factors(s.threat_factors),
            fallback_max_age=s.redis_fallback_max_age,
            single_worker=s.workers <= 1,
            policy_denial_limit=s.policy_denial_limit,
            policy_denial_prefix_limit=s.policy_denial_prefix_limit,
            policy_denial_window=s.policy_denial_window,
            policy_denial_quarantine=s.policy_denial_quarantine,
        )
