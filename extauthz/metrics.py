"""Prometheus metrics, defined once per process. Reason codes label them; secrets never do."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

DECISIONS = Counter(
    "extauthz_decisions_total", "Decisions by HTTP status and reason code", ["status", "reason"]
)
DECISION_SECONDS = Histogram(
    "extauthz_decision_seconds",
    "Time inside the Check handler",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
POLICY_CACHE = Counter(
    "extauthz_policy_cache_total",
    "Decision-cache lookups: hit, miss (OPA asked), shared (joined an in-flight miss), "
    "bypass (revision not confirmed recently); cache: enforced or shadow",
    ["cache", "result"],
)
POLICY_CACHE_BYTES = Gauge(
    "extauthz_policy_cache_bytes",
    "Estimated bytes held by the decision cache (bounded by EXTAUTHZ_DECISION_CACHE_BYTES)",
    ["cache"],
    multiprocess_mode="livesum",
)
POLICY_CACHE_EVICTIONS = Counter(
    "extauthz_policy_cache_evictions_total",
    "Decisions evicted from the cache to keep it within its entry and byte bounds",
    ["cache"],
)
OPA_SECONDS = Histogram(
    "extauthz_opa_request_seconds",
    "OPA decision query latency",
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
OPA_ERRORS = Counter("extauthz_opa_errors_total", "OPA queries that failed", ["reason"])
REVISION_CHANGES = Counter("extauthz_policy_revision_changes_total", "Policy revisions seen")
FAIL_OPEN = Counter(
    "extauthz_policy_fail_open_total", "Decisions served by fail_mode: open while OPA was down"
)
SHADOW = Counter(
    "extauthz_shadow_total", "Shadow evaluations by outcome", ["outcome"]
)  # agree | disagree | error | dropped
SHADOW_BYTES = Gauge(
    "extauthz_shadow_queue_bytes",
    "Bytes of policy inputs waiting for a shadow evaluation (bounded by EXTAUTHZ_SHADOW_MAX_BYTES)",
    multiprocess_mode="livesum",
)
SHADOW_DISAGREEMENTS = Counter(
    "extauthz_shadow_disagreements_total",
    "Enforced vs candidate decisions that differ, by both reasons",
    ["enforced", "candidate"],
)

# rate limiting (extauthz/limits/)
LIMITER_SECONDS = Histogram(
    "extauthz_limiter_redis_seconds",
    "The limiter's Redis round trip (one Lua call; on a cluster, one per slot in parallel)",
    buckets=(0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1),
)
LIMITER_LOCAL = Counter(
    "extauthz_limiter_local_denials_total",
    "429s answered in-process from the over-limit cache, without Redis",
    ["kind"],
)  # window | quarantine
LIMITER_FALLBACK = Counter(
    "extauthz_limiter_fallback_total",
    "Decisions counted by the in-process fallback limiter while Redis was down (fail_mode open)",
    ["outcome"],
)
QUARANTINES = Counter(
    "extauthz_quarantines_total",
    "Automatic quarantines seen by this worker (subject: strikes; prefix: failed authentications)",
    ["kind"],
)
POLICY_DENIALS = Counter(
    "extauthz_policy_denials_counted_total",
    "Policy denials counted against the subject's and network's denial windows, by outcome",
    ["outcome"],
)  # counted | quarantined | error
DEGRADED = Counter(
    "extauthz_degraded_total",
    "Decisions during an OPA (fail-open) or Redis (fallback limiter) outage, by outcome",
    ["mode", "outcome"],
)  # mode opa|redis; outcome served | refused | <check that refused>
THREAT_LEVEL = Gauge(
    "extauthz_threat_level",
    "Threat level in force: 0 normal, 1 elevated, 2 high, 3 critical",
    multiprocess_mode="livemax",
)
AUDIT_RECORDS = Counter(
    "extauthz_audit_records_total",
    "Audit records: chained (written to the local spool), shipped (held by the central sink)",
    ["stage"],
)
AUDIT_SINK_ERRORS = Counter(
    "extauthz_audit_sink_errors_total", "Failed attempts to ship audit records to the sink"
)
AUDIT_SPOOL_BEHIND = Gauge(
    "extauthz_audit_spool_behind_records",
    "Audit records durable in the local spool and not yet held by the central sink",
    multiprocess_mode="livesum",
)

SHAPING = Counter(
    "extauthz_shaping_total",
    "Responses the ext_proc processor handled, by outcome (shaped, upstream_error, failed)",
    ["outcome"],
)
SHAPING_SECONDS = Histogram(
    "extauthz_shaping_seconds",
    "Time the ext_proc processor spent on one message (headers or the buffered body)",
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05),
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    if port:
        start_http_server(port, addr=host)


# behavioural analytics (extauthz/analytics/)
ANALYTICS_EVENTS = Counter(
    "extauthz_analytics_events_total",
    "Query events: sent to the stream, dropped (queue full), failed (Redis), body_omitted "
    "(body over EXTAUTHZ_ANALYTICS_MAX_BODY: tenant only)",
    ["outcome"],
)
ANALYTICS_LAG = Gauge(
    "extauthz_analytics_lag",
    "Entries of a shard stream not yet read by its consumer group (worker side)",
    ["shard"],
    multiprocess_mode="livemax",
)
ANALYTICS_ROWS = Counter(
    "extauthz_analytics_rows_total",
    "Feature rows the worker scored, or skipped (no profile, unreadable, sampled out)",
    ["outcome"],
)
ANALYTICS_SECONDS = Histogram(
    "extauthz_analytics_row_seconds",
    "Detector CPU time per feature row (worker side)",
    buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01),
)
ANALYTICS_ACTIONS = Counter(
    "extauthz_analytics_actions_total",
    "Graduated responses written by the analytics worker, by level",
    ["level"],
)
