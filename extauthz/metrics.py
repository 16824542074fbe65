"""Prometheus metrics, defined once per process. Reason codes label them; secrets never do."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

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
SHADOW_DISAGREEMENTS = Counter(
    "extauthz_shadow_disagreements_total",
    "Enforced vs candidate decisions that differ, by both reasons",
    ["enforced", "candidate"],
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    if port:
        start_http_server(port, addr=host)
