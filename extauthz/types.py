"""The values passed between decision stages: small, frozen, typed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Reason(enum.StrEnum):
    """Why a decision came out as it did. Labels logs and metrics; never sent to the client."""

    OK = "ok"
    # authentication (401)
    NO_CREDENTIAL = "no_credential"
    MALFORMED_CREDENTIAL = "malformed_credential"
    UNKNOWN_KEY = "unknown_key"
    BAD_KEY_SECRET = "bad_key_secret"  # noqa: S105 - a reason code
    KEY_EXPIRED = "key_expired"
    KEY_REVOKED = "key_revoked"
    KEY_SOURCE_NOT_ALLOWED = "key_source_not_allowed"  # outside the key's CIDR ranges
    # JWT access tokens (401)
    JWT_NOT_CONFIGURED = "jwt_not_configured"
    ALG_NOT_ALLOWED = "alg_not_allowed"  # none, HMAC, anything off the allow-list
    UNKNOWN_KID = "unknown_kid"
    KEY_ALG_MISMATCH = "key_alg_mismatch"  # key type/curve/alg/use does not fit the alg
    BAD_SIGNATURE = "bad_signature"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a reason code
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"  # noqa: S105 - nbf or iat in the future
    TOKEN_LIFETIME_TOO_LONG = "token_lifetime_too_long"  # noqa: S105 - exp - iat > max
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    BAD_CLAIMS = "bad_claims"  # missing or mistyped exp/iat/sub/roles/...
    # DPoP proofs, RFC 9449 (401)
    DPOP_PROOF_MISSING = "dpop_proof_missing"  # a bound token without a proof
    DPOP_BOUND_TOKEN_AS_BEARER = "dpop_bound_token_as_bearer"  # noqa: S105 - a reason code
    DPOP_TOKEN_NOT_BOUND = "dpop_token_not_bound"  # noqa: S105 - a reason code
    DPOP_MULTIPLE_PROOFS = "dpop_multiple_proofs"
    DPOP_MALFORMED = "dpop_malformed"
    DPOP_BAD_TYP = "dpop_bad_typ"
    DPOP_ALG_NOT_ALLOWED = "dpop_alg_not_allowed"
    DPOP_PRIVATE_KEY = "dpop_private_key"
    DPOP_BAD_SIGNATURE = "dpop_bad_signature"
    DPOP_HTM_MISMATCH = "dpop_htm_mismatch"
    DPOP_HTU_MISMATCH = "dpop_htu_mismatch"
    DPOP_IAT_OUT_OF_WINDOW = "dpop_iat_out_of_window"
    DPOP_ATH_MISMATCH = "dpop_ath_mismatch"
    DPOP_KEY_MISMATCH = "dpop_key_mismatch"  # proof key thumbprint != the token's cnf.jkt
    DPOP_NONCE_REQUIRED = "dpop_nonce_required"  # missing, wrong or stale nonce
    DPOP_REPLAY = "dpop_replay"  # a proof jti seen before (the state check)
    DPOP_ORIGIN_NOT_CONFIGURED = "dpop_origin_not_configured"  # EXTAUTHZ_DPOP_ORIGIN is empty
    # devices
    DEVICE_REVOKED = "device_revoked"
    # mTLS service identities (401)
    MTLS_NOT_CONFIGURED = "mtls_not_configured"
    MTLS_UNTRUSTED_CERT = "mtls_untrusted_cert"
    MTLS_NO_IDENTITY = "mtls_no_identity"  # no URI or DNS SAN
    MTLS_UNKNOWN_IDENTITY = "mtls_unknown_identity"  # not in data.extauthz.mtls_identities
    # policy (403); OPA supplies its own codes, carried as `policy_reason`
    POLICY_DENY = "policy_deny"
    BAD_REQUEST = "bad_request"
    # limits (429)
    RATE_LIMITED = "rate_limited"
    QUARANTINED = "quarantined"  # the subject, device or source prefix is quarantined
    # dependencies (503)
    OPA_UNAVAILABLE = "opa_unavailable"
    OPA_BAD_RESPONSE = "opa_bad_response"
    REDIS_UNAVAILABLE = "redis_unavailable"
    JWKS_UNAVAILABLE = "jwks_unavailable"
    INTERNAL_ERROR = "internal_error"
    AUDIT_UNAVAILABLE = "audit_unavailable"  # the audit spool cannot be written (503)


class Status(enum.IntEnum):
    OK = 200
    UNAUTHENTICATED = 401
    FORBIDDEN = 403
    RATE_LIMITED = 429
    UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class ModelRoute:
    """What a V2 Open Inference Protocol path addresses."""

    name: str = ""  # "" for a path that is not a model route
    version: str = ""
    action: str = ""  # infer | metadata | ready | ""


@dataclass(frozen=True, slots=True)
class RequestView:
    """The parts of a CheckRequest the decision uses, parsed once."""

    request_id: str
    method: str
    path: str  # without query string
    host: str
    # The client's address, the one every stage uses (key CIDRs, policy, limiter, log): the peer,
    # or the X-Forwarded-For hop the trusted proxies vouch for (request.client_address).
    source_ip: str
    headers: dict[str, str]  # lower-case names; what Envoy sent
    route: ModelRoute
    body: bytes = b""
    tls_principal: str = ""
    scheme: str = ""  # http | https, as Envoy saw it (never DPoP htu: EXTAUTHZ_DPOP_ORIGIN)
    peer_certificate: str = ""  # the client certificate (PEM) on an mTLS listener, else ""
    peer_ip: str = ""  # the TCP peer Envoy reports (a proxy's address behind trusted proxies)


@dataclass(frozen=True, slots=True)
class Device:
    """The key that proved possession (DPoP) in this request, and what the registry says of it."""

    thumbprint: str  # RFC 7638 SHA-256 thumbprint of the proof's public key
    trust: str  # none | registered | managed | attested ("none": not enrolled for the subject)
    state_key: str = ""  # the device record, re-checked (still active) in the state round trip
    replay_key: str = ""  # the proof's jti, set-if-absent in the state round trip
    replay_ttl: int = 0  # seconds the jti is remembered (the proof acceptance window)


NO_DEVICE = Device(thumbprint="", trust="none")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]
    tier: str
    credential: str  # api_key | jwt | jwt+dpop | mtls
    credential_id: str  # key id or token hash prefix: logged, not secret
    state_key: str = ""  # Redis key re-checked in the state round trip ("" when none)
    device: Device = NO_DEVICE
    rate_key: str = ""  # rate-limit identity when not credential_id (e.g. a JWT's subject)


# What a quota window can count per (rego/README.md, "Quota windows").
DIMENSIONS = ("credential", "subject", "device", "source_prefix", "project", "model")


@dataclass(frozen=True, slots=True)
class Window:
    """One sliding-window quota: at most `limit` requests per `window` seconds, counted per
    value of the `key` dimensions (e.g. ("subject", "model"): each subject on each model)."""

    name: str
    limit: int
    window: int
    key: tuple[str, ...] = ("credential",)


@dataclass(frozen=True, slots=True)
class ResponsePlan:
    """What the response path does to an allowed answer (rego/README.md, "Response plan"):
    the policy's hints merged with the subject's degradation level. Empty: not shaped at all
    (the response never reaches the ext_proc processor)."""

    round: int | None = None  # floating-point outputs rounded to this many decimals
    max_classes: int | None = None  # class-score outputs keep the top-k classes per row
    labels_only: bool = False  # class-score outputs become their labels (argmax)
    drop_outputs: tuple[str, ...] = ()  # outputs removed by name
    cache: str = "no-store"  # no-store | tenant: Cache-Control and Vary of the answer

    @property
    def shapes(self) -> bool:
        return (
            self.round is not None
            or self.max_classes is not None
            or self.labels_only
            or bool(self.drop_outputs)
        )


NO_PLAN = ResponsePlan()


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allow: bool
    status: int
    reason: str
    quota: tuple[Window, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    decision_id: str = ""  # OPA's decision id, when it returns one
    response: tuple[tuple[str, object], ...] = ()  # shaping hints for the response path
    source: str = "opa"  # opa | cache | fail_open
    revision: str = ""  # the policy revision it was decided under, when known
    # quota_context: what the limiter needs beyond the windows
    project: str = ""  # the model's project (the `project` dimension)
    fail_mode: str = "closed"  # open: an in-process limiter stands in while Redis is down
    throttle: tuple[tuple[str, float], ...] = ()  # threat level -> limit factor, this model
    plan: ResponsePlan = NO_PLAN  # `response`, parsed and validated (shaping.plan)


@dataclass(frozen=True, slots=True)
class WindowState:
    """A window after the check: what the RateLimit header reports."""

    window: Window
    remaining: int
    reset: int  # seconds until the window has room again / fully resets


@dataclass(frozen=True, slots=True)
class LimitResult:
    allowed: bool
    reason: Reason
    windows: tuple[WindowState, ...] = ()
    retry_after: int = 0
    detail: str = ""  # for the decision log: which window or block denied, "local", "fallback"
    degrade: int = 0  # the subject's degradation level (risk hash field `degrade`): 0-3


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome the response builder turns into a CheckResponse."""

    status: Status
    reason: Reason
    decision_id: str
    principal: Principal | None = None
    policy: PolicyDecision | None = None
    limits: LimitResult | None = None
    upstream_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)
    denial_headers: tuple[tuple[str, str], ...] = ()  # e.g. WWW-Authenticate + DPoP-Nonce
    plan: ResponsePlan = NO_PLAN  # what the response path does to the answer (allowed only)

    @property
    def allowed(self) -> bool:
        return self.status is Status.OK


class Denied(Exception):  # noqa: N818 - it is a result, not an error
    """Raised by a stage to end the decision with `status` and `reason`."""

    def __init__(
        self,
        status: Status,
        reason: Reason,
        detail: str = "",
        headers: tuple[tuple[str, str], ...] = (),
        limits: LimitResult | None = None,
    ) -> None:
        super().__init__(f"{status.value} {reason.value} {detail}".strip())
        self.status = status
        self.reason = reason
        self.detail = detail
        self.headers = headers  # response headers the denial must carry (RFC-defined only)
        self.limits = limits  # a 429's Retry-After and RateLimit state
