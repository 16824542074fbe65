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
    # policy (403); OPA supplies its own codes, carried as `policy_reason`
    POLICY_DENY = "policy_deny"
    BAD_REQUEST = "bad_request"
    # limits (429)
    RATE_LIMITED = "rate_limited"
    # dependencies (503)
    OPA_UNAVAILABLE = "opa_unavailable"
    OPA_BAD_RESPONSE = "opa_bad_response"
    REDIS_UNAVAILABLE = "redis_unavailable"
    INTERNAL_ERROR = "internal_error"


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
    source_ip: str
    headers: dict[str, str]  # lower-case names; what Envoy sent
    route: ModelRoute
    body: bytes = b""
    tls_principal: str = ""


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    subject: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]
    tier: str
    credential: str  # api_key | jwt | jwt+dpop | mtls
    credential_id: str  # key id or token hash prefix: rate-limit identity, logged, not secret
    state_key: str = ""  # Redis key re-checked in the state round trip ("" when none)


@dataclass(frozen=True, slots=True)
class Window:
    """One sliding-window quota: at most `limit` requests per `window` seconds."""

    name: str
    limit: int
    window: int


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    allow: bool
    status: int
    reason: str
    quota: tuple[Window, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    decision_id: str = ""  # OPA's decision id, when it returns one


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

    @property
    def allowed(self) -> bool:
        return self.status is Status.OK


class Denied(Exception):  # noqa: N818 - it is a result, not an error
    """Raised by a stage to end the decision with `status` and `reason`."""

    def __init__(self, status: Status, reason: Reason, detail: str = "") -> None:
        super().__init__(f"{status.value} {reason.value} {detail}".strip())
        self.status = status
        self.reason = reason
        self.detail = detail
