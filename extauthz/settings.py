"""All settings, read once from EXTAUTHZ_* environment variables and an optional file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# An optional dotenv-style file of EXTAUTHZ_* lines; the environment wins over it.
CONFIG_FILE_ENV = "EXTAUTHZ_CONFIG_FILE"


class Settings(BaseSettings):
    """Every setting of the service, CLI and dev stack. `extauthz serve --help` lists them."""

    model_config = SettingsConfigDict(env_prefix="EXTAUTHZ_", extra="ignore", frozen=True)

    # --- service
    host: str = Field("127.0.0.1", description="Address the gRPC ext_authz server binds to.")
    port: int = Field(9191, description="gRPC ext_authz port.")
    log_level: str = Field("INFO", description="Log level of the service's own logs.")
    decision_log: str = Field(
        "-", description="Where the per-decision JSON log goes: '-' for stderr, or a file path."
    )

    # --- audit trail (extauthz/audit/)
    audit_enabled: bool = Field(
        True,
        description="Chain every decision record into the audit trail: local spool, signed "
        "checkpoints, central sink (README, Audit trail).",
    )
    audit_spool_dir: str = Field(
        "",
        description="Directory of the local audit spools (one per worker, w<index>/). Empty: "
        "<run_dir>/audit.",
    )
    audit_signing_key: SecretStr = Field(
        SecretStr(""),
        description="Ed25519 key (32-byte seed, hex or base64url) signing audit checkpoints. "
        "Empty: read or create the file at audit_signing_key_file. Never logged.",
    )
    audit_signing_key_file: str = Field(
        "",
        description="File holding the checkpoint signing key when audit_signing_key is empty "
        "(created 0600 on first use, public key beside it as <file>.pub). Empty: "
        "<run_dir>/audit-signing-key.",
    )
    audit_public_key_file: str = Field(
        "",
        description="Public key file(s) `audit verify` trusts (hex or PEM; several: "
        "comma-separated). Empty: the .pub file beside the signing key.",
    )
    audit_flush_interval: float = Field(
        0.05,
        description="Seconds between the audit writer's spool writes: a SIGKILL loses at most "
        "the records of one interval.",
    )
    audit_fsync_interval: float = Field(
        0.25,
        description="Longest seconds between fsyncs of the audit spool (groups of writes): a "
        "crash of the host loses at most this; the sink gets only fsync'd records.",
    )
    audit_checkpoint_interval: float = Field(
        2.0, description="Seconds between signed checkpoints of each audit chain."
    )
    audit_segment_bytes: int = Field(
        16 * 1024 * 1024, description="Size at which the audit spool starts a new segment file."
    )
    audit_sink: Literal["redis", "none"] = Field(
        "redis",
        description="Central audit store: redis (a Stream per writer, on redis_url) or none "
        "(the spool only).",
    )
    audit_sink_timeout: float = Field(
        1.0, description="Budget (s) of one shipment to the audit sink (off the request path)."
    )
    audit_drain_timeout: float = Field(
        3.0,
        description="Seconds a stopping service waits for the sink to take its spool; the rest "
        "ships on the next start.",
    )
    audit_required: bool = Field(
        True,
        description="While the audit spool cannot be written (a full disk), refuse every "
        "decision (503, reason audit_unavailable) rather than serve requests whose records "
        "are not durable. False: serve, hold up to audit_max_pending_records, then drop and "
        "count (a `lost` record in the chain).",
    )
    audit_max_pending_records: int = Field(
        100_000,
        description="While the audit spool cannot be written (a full disk), at most this many "
        "chained records are held in memory (~0.7 KB each); beyond, records are dropped and "
        "counted, and a `lost` record in the chain says how many once the spool works again.",
    )
    audit_archive_dir: str = Field(
        "",
        description="Where `extauthz audit archive` writes the records it moves out of the "
        "central store (<dir>/<writer>/<first>-<last>.jsonl). Empty: <run_dir>/audit-archive.",
    )
    audit_keep_seconds: float = Field(
        86400.0,
        description="`extauthz audit archive` moves records older than this out of the central "
        "store (the store's memory grows ~0.7 KB per decision until then).",
    )
    audit_node: str = Field(
        "", description="Name of this host in audit writer ids. Empty: the hostname."
    )
    audit_actor: str = Field(
        "",
        description="Who the CLI records as the actor of operator actions. Empty: the login "
        "(and SUDO_USER).",
    )

    # --- API keys
    key_pepper: SecretStr = Field(
        SecretStr(""),
        description="Secret for the keyed hash of API keys (HMAC-SHA256). Empty: read or create "
        "the file at key_pepper_file.",
    )
    key_pepper_file: Path = Field(
        Path(".run/key-pepper"),
        description="File holding the API-key hashing secret when key_pepper is empty "
        "(created with mode 0600 on first use).",
    )
    key_cache_ttl: float = Field(
        30.0,
        description="Seconds an API-key record stays cached in-process. Revocation is still "
        "immediate: every allow re-checks the key's status in the decision's Redis call.",
    )
    key_cache_size: int = Field(10_000, description="Max API-key records cached in-process.")

    # --- JWT access tokens
    jwt_jwks: str = Field(
        "",
        description="The token issuer's JWKS: a file path or an https:// URL. Empty: the dev "
        "issuer's <run_dir>/dev-issuer/jwks.json when the dev stack starts the service; "
        "otherwise JWTs are refused.",
    )
    jwt_issuer: str = Field("extauthz-dev-issuer", description="Required `iss` of access tokens.")
    jwt_audience: str = Field("extauthz", description="Required `aud` of access tokens.")
    jwt_algorithms: str = Field(
        "RS256,ES256,EdDSA",
        description="Accepted signature algorithms (comma-separated subset of RS256, ES256, "
        "EdDSA; none and HMAC are never accepted). Also applies to DPoP proofs.",
    )
    jwt_leeway: int = Field(30, description="Clock-skew leeway (s) for exp, nbf and iat.")
    jwt_max_lifetime: int = Field(
        900, description="Longest accepted token lifetime, exp - iat (s); longer ones are refused."
    )
    jwt_subject_claim: str = Field("sub", description="Claim holding the subject.")
    jwt_roles_claim: str = Field(
        "roles", description="Claim with the roles (list or space-separated; dotted path ok)."
    )
    jwt_projects_claim: str = Field("projects", description="Claim with the projects.")
    jwt_tier_claim: str = Field("tier", description="Claim with the quota tier.")
    jwt_cache_size: int = Field(
        10_000, description="Verified tokens cached in-process by SHA-256, until they expire."
    )
    jwks_refresh_interval: float = Field(
        300.0, description="Seconds between scheduled JWKS reloads (issuer key rotation)."
    )
    jwks_min_refresh_interval: float = Field(
        10.0,
        description="Least seconds between two JWKS reloads, also those an unknown `kid` "
        "triggers (so made-up kids cannot hammer the issuer).",
    )
    jwks_timeout: float = Field(2.0, description="Budget (s) for fetching an https JWKS.")

    # --- DPoP (RFC 9449) and devices
    dpop_window: int = Field(
        60, description="Seconds a DPoP proof is accepted after its iat; its jti is kept as long."
    )
    dpop_leeway: int = Field(5, description="Seconds a DPoP proof's iat may be in the future.")
    dpop_require_nonce: bool = Field(
        False,
        description="Require a server nonce in DPoP proofs (401 use_dpop_nonce + DPoP-Nonce).",
    )
    dpop_nonce_lifetime: int = Field(300, description="Seconds a server DPoP nonce stays valid.")
    dpop_origin: str = Field(
        "",
        description="Public origins clients sign in DPoP htu, comma-separated (e.g. "
        "https://api.example.com); required for DPoP, never taken from the client's Host. Empty: "
        "DPoP is refused (the dev stack sets its own listeners).",
    )
    device_cache_ttl: float = Field(
        30.0,
        description="Seconds a device record is cached (trust changes show within it; revocation "
        "is immediate: re-checked in the decision's Redis call).",
    )
    device_cache_size: int = Field(10_000, description="Device records cached in-process.")

    # --- mTLS service identities
    mtls_ca_file: str = Field(
        "",
        description="CA bundle (PEM) client certificates must chain to; Envoy's mTLS listener "
        "requires it and the service re-verifies. Empty: the dev CA (<run_dir>/dev-ca/ca.pem) "
        "in the dev stack; otherwise mTLS is refused.",
    )
    mtls_identities_ttl: float = Field(
        5.0, description="Seconds the identity map (OPA data.extauthz.mtls_identities) is cached."
    )

    # --- OPA
    opa_url: str = Field(
        "http://127.0.0.1:8181",
        description="OPA server base URL (the dev stack starts OPA on its port).",
    )
    opa_decision_path: str = Field(
        "extauthz/authz/decision", description="Rule path queried as POST /v1/data/<path>."
    )
    opa_timeout: float = Field(0.25, description="Budget (s) for one OPA query; past it: 503.")
    policy_dir: Path = Field(
        Path("rego"), description="Rego policies and data OPA loads (dev stack; policy CLI)."
    )
    revision_poll_interval: float = Field(
        0.25,
        description="Seconds between checks of OPA's policy revision. A policy or data change "
        "takes effect within this interval plus OPA's file-watch delay.",
    )
    revision_max_age: float = Field(
        1.0,
        description="Cached decisions are used only while the revision was confirmed this "
        "recently; otherwise OPA is asked (and if it is down, the request fails closed).",
    )
    decision_cache_size: int = Field(
        50_000, description="Policy decisions cached in-process (LRU); 0 disables the cache."
    )
    decision_cache_bytes: int = Field(
        32 * 1024 * 1024,
        description="Bytes the decision cache may hold (estimated per entry; least recently "
        "used entries are evicted first); 0 disables the cache. Metric "
        "extauthz_policy_cache_bytes.",
    )
    shadow_decision_path: str = Field(
        "",
        description="A candidate rule evaluated beside the enforced one, off the request path "
        "(e.g. extauthz/candidate/decision); empty: shadow mode off.",
    )
    shadow_sample: float = Field(1.0, description="Fraction of decisions also sent to the shadow.")
    shadow_log: str = Field(
        ".run/logs/shadow.log", description="Where shadow disagreements are written (JSON lines)."
    )
    shadow_max_bytes: int = Field(
        8 * 1024 * 1024,
        description="Bytes of policy inputs that may wait for a shadow evaluation; past it "
        "new ones are dropped (extauthz_shadow_total{outcome=dropped}).",
    )
    shadow_log_max_bytes: int = Field(
        64 * 1024 * 1024,
        description="Size at which the shadow log is rotated to <shadow_log>.1 (one old file "
        "is kept).",
    )
    policy_denial_limit: int = Field(
        60,
        description="Policy denials (403) per subject and policy_denial_window before the "
        "subject is quarantined for policy_denial_quarantine seconds (every request 429, no "
        "OPA query); 0: not counted.",
    )
    policy_denial_prefix_limit: int = Field(
        600,
        description="Policy denials per source prefix and policy_denial_window before the "
        "prefix is quarantined likewise; 0: not counted.",
    )
    policy_denial_window: int = Field(
        60, description="Seconds of the sliding window policy denials are counted in."
    )
    policy_denial_quarantine: int = Field(
        60,
        description="Seconds a subject or prefix stays quarantined after too many policy denials.",
    )
    metrics_port: int = Field(
        9192, description="Prometheus metrics on <host>:<port>/metrics; 0: no metrics server."
    )

    # --- Redis
    redis_url: str = Field(
        "redis://127.0.0.1:6380/0",
        description="Redis URL (the dev stack starts Redis on its port).",
    )
    redis_timeout: float = Field(0.1, description="Budget (s) for one Redis call; past it: 503.")
    redis_cluster: bool = Field(
        False,
        description="redis_url names a node of a Redis Cluster: the limiter makes one Lua call "
        "per slot (sent together), and the client follows the cluster's slot map.",
    )

    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(
        "auto",
        description="The service's event loop: uvloop (libuv; less CPU per decision, measured "
        "in bench/), asyncio (the standard library's), or auto (uvloop when installed).",
    )

    # --- rate limiting (extauthz/limits/)
    workers: int = Field(
        1,
        description="Service processes sharing the gRPC port (SO_REUSEPORT); `serve --workers` "
        "overrides. Limits are shared through Redis.",
    )
    source_prefix_v4: int = Field(
        24, description="IPv4 prefix length of the `source_prefix` dimension and quarantine."
    )
    source_prefix_v6: int = Field(
        56, description="IPv6 prefix length of the `source_prefix` dimension and quarantine."
    )
    trusted_hops: int = Field(
        0,
        description="Proxies in front of Envoy whose X-Forwarded-For entries are trusted for "
        "the one client address every stage uses (key CIDRs, policy source_ip, limiter, log); "
        "0: the peer address Envoy reports, never the header.",
    )
    trusted_proxies: str = Field(
        "",
        description="Address ranges of those proxies (comma-separated CIDRs): X-Forwarded-For is "
        "believed only from a peer inside them, hop by hop. Empty: with trusted_hops > 0 every "
        "peer counts as a proxy (only the proxies may reach Envoy).",
    )
    auth_failure_limit: int = Field(
        30,
        description="Failed authentications per source prefix and auth_failure_window before "
        "the prefix is quarantined (credential stuffing); 0: not counted.",
    )
    auth_failure_window: int = Field(
        60, description="Seconds of the sliding window failed authentications are counted in."
    )
    auth_failure_quarantine: int = Field(
        300,
        description="Seconds a prefix stays quarantined (every request 429) after too many "
        "failed authentications.",
    )
    quarantine_strikes: int = Field(
        10,
        description="A subject that runs into its own windows this many times (one strike per "
        "episode: until room comes back) within quarantine_strike_period is quarantined "
        "automatically; 0: never.",
    )
    quarantine_strike_period: int = Field(
        600, description="Seconds within which strikes count towards automatic quarantine."
    )
    quarantine_ttl: int = Field(900, description="Seconds an automatic subject quarantine lasts.")
    overlimit_cache_size: int = Field(
        100_000,
        description="Keys a worker remembers as over limit or quarantined, answering 429 "
        "without Redis (LRU); 0 disables the local cache.",
    )
    overlimit_cache_max_age: float = Field(
        2.0,
        description="Longest a worker trusts its own over-limit entry before asking Redis "
        "again: a quarantine release or a raised limit reaches every worker within it.",
    )
    threat_poll_interval: float = Field(
        1.0, description="Seconds between each worker's reads of the threat level."
    )
    auto_threat_ratio: float = Field(
        0.5,
        description="Raise the threat level automatically when at least this share of the "
        "authenticated sources a worker saw in auto_threat_window were refused (403 or 429 by "
        "their windows); each source counts once, unauthenticated and quarantined traffic not "
        "at all (README, Security); 0 turns it off.",
    )
    auto_threat_min_sources: int = Field(
        20,
        description="Distinct refused sources (credentials, and as many distinct source "
        "prefixes) a worker must see in a window before their share counts.",
    )
    auto_threat_window: float = Field(
        10.0, description="Seconds over which a worker measures the refused share."
    )
    auto_threat_level: str = Field(
        "elevated", description="The level an automatic raise sets (never lowers a higher one)."
    )
    auto_threat_ttl: int = Field(
        600, description="Seconds an automatically raised level lasts before it reverts."
    )
    redis_fallback_max_age: float = Field(
        60.0,
        description="While Redis is down, a fail-open model is served only to an API key or "
        "device this worker saw active in Redis within this many seconds; DPoP proofs are "
        "checked against this worker's memory of jtis (with workers > 1: refused).",
    )
    threat_factors: str = Field(
        "elevated=0.5,high=0.25,critical=0.1",
        description="Limit factors per threat level when the policy gives none "
        "(quota_context.throttle).",
    )

    # --- behavioural analytics (extauthz/analytics/)
    analytics_events: bool = Field(
        True,
        description="Emit one query event per allowed inference decision to the analytics "
        "stream (off the request path: a bounded queue flushed in the background).",
    )
    analytics_shards: int = Field(
        8,
        description="Stream shards events are spread over by subject; each has one owning "
        "worker at a time. Every service process and worker must agree on it.",
    )
    analytics_stream_maxlen: int = Field(
        10_000,
        description="Entries each shard stream keeps (XADD MAXLEN ~): older are trimmed. Redis "
        "holds at most about shards x maxlen x analytics_max_body bytes of events.",
    )
    analytics_queue_size: int = Field(
        10_000,
        description="Events a service process holds before sending; past it (or 8 MiB of "
        "bodies) new ones are dropped (extauthz_analytics_events_total{outcome=dropped}).",
    )
    analytics_max_body: int = Field(
        8_192,
        description="Largest body an event carries as sent; a larger one is replaced (off the "
        "request path) by its canonical rows, at most analytics_rows_per_event of them.",
    )
    analytics_rows_per_event: int = Field(
        8, description="Feature rows the worker scores per event (a larger batch is sampled)."
    )
    analytics_tenants: int = Field(
        4_000, description="Tenant states (subject, model) a worker keeps in memory (LRU)."
    )
    analytics_lease: float = Field(
        5.0, description="Seconds a worker's claim on a shard lasts unless renewed."
    )

    # --- request handling
    max_body_bytes: int = Field(
        65536, description="Largest request body the service reads (Envoy buffers up to this)."
    )

    # --- response shaping (extauthz/shaping/)
    shape_port: int = Field(
        0,
        description="Port of the ext_proc response-shaping processor Envoy calls; 0: the "
        "ext_authz port (the processor runs in the service process). Otherwise run "
        "`extauthz serve --shaping-only` beside the service.",
    )
    shape_max_body_bytes: int = Field(
        1048576,
        description="Largest model answer Envoy buffers for shaping; a larger one gets 503 "
        '{"error":"unavailable"} (never a half or unshaped body).',
    )

    # --- dev stack (make up / make demo / tests)
    run_dir: Path = Field(
        Path(".run"), description="Pids, logs, models and configs of the dev stack."
    )
    envoy_port: int = Field(10000, description="Envoy HTTP listener port (dev stack).")
    envoy_mtls_port: int = Field(
        10443, description="Envoy HTTPS listener requiring client certificates (dev stack)."
    )
    envoy_tls_port: int = Field(
        10444,
        description="Envoy HTTPS listener for every client (TLS 1.2+, h2/http1.1 by ALPN; "
        "certificate by SDS from files). The plain HTTP listener is for local development only.",
    )
    envoy_admin_port: int = Field(9901, description="Envoy admin port (dev stack).")
    # --- the edge (extauthz/edge/: Envoy's generated configuration)
    envoy_route_timeout: float = Field(
        15.0,
        description="Seconds Envoy waits for the model server's answer on a model route, unless "
        "the model's catalog entry sets edge.timeout_s.",
    )
    envoy_request_headers_timeout: float = Field(
        10.0,
        description="Seconds a client has to send a request's headers (slow-header clients get "
        "408 and the connection closed).",
    )
    envoy_model_max_requests: int = Field(
        1024,
        description="Circuit breaker toward the model server (per cluster): most connections, "
        "pending and active requests; past it Envoy answers 503 at once.",
    )
    envoy_max_connections: int = Field(
        10_000,
        description="Overload manager: most downstream connections Envoy accepts in total.",
    )
    envoy_max_heap_bytes: int = Field(
        1 << 30,
        description="Overload manager: Envoy's heap budget; at 95 % it shrinks its heap, at "
        "98 % it refuses new requests.",
    )
    model_port: int = Field(8080, description="MLServer HTTP port (dev stack).")
    model_grpc_port: int = Field(8081, description="MLServer gRPC port (dev stack).")
    model_venv: Path = Field(Path(".venv-model"), description="MLServer's own virtualenv.")
    opa_bin: str = Field("", description="OPA binary; empty: `opa` on PATH, else ./bin/opa.")

    @property
    def opa_port(self) -> int:
        return urlsplit(self.opa_url).port or 8181

    @property
    def redis_port(self) -> int:
        return urlsplit(self.redis_url).port or 6379


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, the optional EXTAUTHZ_CONFIG_FILE, then `overrides`."""
    env_file = os.environ.get(CONFIG_FILE_ENV) or None
    return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]


def describe_settings() -> str:
    """One line per setting: env var, default, description (for --help)."""
    lines = []
    for name, field in Settings.model_fields.items():
        default = field.default
        if isinstance(default, SecretStr):
            default = "(secret)" if default.get_secret_value() else "''"
        lines.append(f"  EXTAUTHZ_{name.upper():<22} default {default!s:<28} {field.description}")
    return "\n".join(lines)
