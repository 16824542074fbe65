"""JWT access tokens (RFC 7519, shaped like RFC 9068) verified with joserfc against the issuer's
JWKS. Signatures are joserfc's; this module decides which algorithm, which key and which
claims are acceptable.

One verification, in order (each failure is a Denied(401) with its own reason code):

1. shape: at most MAX_TOKEN_BYTES, three segments;
2. cache: a token whose SHA-256 is cached was verified before and is returned as it was;
3. header: ``alg`` on the allow-list (never ``none`` nor HMAC), ``typ`` absent, ``JWT`` or
   ``at+jwt`` (never ``dpop+jwt``), no ``crit``/``b64``;
4. key: by ``kid`` from the JWKS (refreshed on an unknown kid, rate-limited); its type, curve,
   ``alg`` and ``use`` must fit the header's ``alg``;
5. signature;
6. claims: ``iss``, ``aud``, ``exp``, ``nbf``, ``iat`` with leeway; ``exp``, ``iat``, ``sub``
   required; ``exp - iat`` at most the maximum lifetime;
7. mapping: subject, roles, projects, tier from configurable claim names; ``cnf.jkt`` kept
   for the DPoP binding check.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import (
    ClaimError,
    ExpiredTokenError,
    InvalidKeyCurveError,
    InvalidKeyTypeError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import Key
from joserfc.jwt import JWTClaimsRegistry

from extauthz.authn.jwks import JwksSource
from extauthz.cache import TTLCache
from extauthz.clock import Clock, system_clock
from extauthz.types import Denied, Reason, Status

# The only algorithms this service ever accepts, and the key type each one needs.
KEY_TYPE_OF_ALG = {"RS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}
MAX_TOKEN_BYTES = 8192
_MIN_RSA_BITS = 2048
_ACCESS_TOKEN_TYPES = {"jwt", "at+jwt", "application/at+jwt"}


def _unauthenticated(reason: Reason, detail: str = "") -> Denied:
    return Denied(Status.UNAUTHENTICATED, reason, detail)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class AllowListRegistry(jws.JWSRegistry):
    """joserfc's JWS registry restricted to an explicit allow-list.

    joserfc warns on every use of ``EdDSA`` (deprecated by RFC 9864 in favour of ``Ed25519``);
    accepting it is a deliberate decision of this allow-list, so no warning per request."""

    def __init__(self, algorithms: Collection[str]) -> None:
        unknown = set(algorithms) - set(KEY_TYPE_OF_ALG)
        if unknown:
            raise ValueError(f"algorithms not supported: {sorted(unknown)}")
        super().__init__(algorithms=list(algorithms), strict_check_header=False)

    def get_alg(self, name: str) -> jws.JWSAlgModel:
        if not self.allowed or name not in self.allowed or name not in self.algorithms:
            raise UnsupportedAlgorithmError(f"algorithm {name!r} is not allowed")
        return self.algorithms[name]


def key_fits_alg(key: Key, alg: str) -> bool:
    """RFC 7517 §4: the key's type (and curve, size, alg, use) must suit the algorithm."""
    if key.key_type != KEY_TYPE_OF_ALG.get(alg):
        return False
    if key.alg not in (None, alg) or key.get("use") not in (None, "sig"):
        return False
    if alg == "ES256" and key.get("crv") != "P-256":
        return False
    if alg == "EdDSA" and key.get("crv") not in ("Ed25519", "Ed448"):
        return False
    if alg == "RS256" and key.public_key.key_size < _MIN_RSA_BITS:  # type: ignore[union-attr]
        return False
    return True


def verify_signature(
    obj: jws.CompactSignature, key: Key, registry: AllowListRegistry
) -> tuple[bool, str]:
    """(valid, why-not). Key/alg mismatches joserfc finds count as a mismatch, not a bad sig."""
    try:
        return jws.validate_compact(obj, key, registry=registry), "bad signature"
    except (InvalidKeyTypeError, InvalidKeyCurveError) as exc:
        return False, f"key: {exc.error}"
    except (JoseError, ValueError, TypeError) as exc:
        return False, type(exc).__name__


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class TokenRules:
    """What an acceptable access token looks like (from the settings)."""

    issuer: str
    audience: str
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    leeway: int = 30
    max_lifetime: int = 900
    subject_claim: str = "sub"
    roles_claim: str = "roles"
    projects_claim: str = "projects"
    tier_claim: str = "tier"


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token whose signature and claims passed. Cached until `exp` (plus leeway)."""

    subject: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]
    tier: str
    exp: int
    token_hash: str  # hex SHA-256 of the token: its log/rate identity prefix, never the token
    ath: str  # base64url SHA-256 of the token (RFC 9449 §4.2 `ath`)
    jkt: str = ""  # cnf.jkt: the DPoP key the token is bound to ("" when unbound)


def _claim(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (e.g. realm_access.roles)."""
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _strings(value: Any, name: str) -> tuple[str, ...]:
    """A list of strings, or one space-separated string (like OAuth `scope`)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _unauthenticated(Reason.BAD_CLAIMS, f"{name} is not a list of strings")


def _binding(claims: dict[str, Any]) -> str:
    cnf = claims.get("cnf")
    if cnf is None:
        return ""
    if not isinstance(cnf, dict) or not isinstance(cnf.get("jkt"), str) or not cnf["jkt"]:
        # e.g. an mTLS-bound token (cnf.x5t#S256): a binding this service cannot check
        raise _unauthenticated(Reason.BAD_CLAIMS, "unsupported cnf")
    return cnf["jkt"]


class JwtVerifier:
    """Access token → VerifiedToken, or Denied(401). Verified tokens are cached by SHA-256
    until they expire (bounded LRU): a cache hit is not verified again."""

    def __init__(
        self,
        jwks: JwksSource,
        rules: TokenRules,
        cache_size: int = 10_000,
        clock: Clock = system_clock,
    ) -> None:
        self._jwks = jwks
        self._rules = rules
        self._clock = clock
        self._registry = AllowListRegistry(rules.algorithms)
        self._cache: TTLCache[bytes, VerifiedToken] = TTLCache(cache_size, 0, clock)
        self._claims = JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=rules.leeway,
            iss={"essential": True, "value": rules.issuer},
            aud={"essential": True, "value": rules.audience},
            exp={"essential": True},
            iat={"essential": True},
        )

    async def verify(self, token: str) -> VerifiedToken:
        raw = token.encode()
        if len(raw) > MAX_TOKEN_BYTES or raw.count(b".") != 2:
            raise _unauthenticated(Reason.MALFORMED_CREDENTIAL, "not a compact JWS")
        digest = hashlib.sha256(raw).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            return cached

        obj = self._parse(raw)
        header = obj.headers()
        key = await self._key_for(header)
        valid, why = verify_signature(obj, key, self._registry)
        if not valid:
            reason = Reason.KEY_ALG_MISMATCH if why.startswith("key") else Reason.BAD_SIGNATURE
            raise _unauthenticated(reason, why)
        claims = self._check_claims(obj.payload)
        verified = self._map(claims, digest)
        ttl = verified.exp + self._rules.leeway - self._clock()
        if ttl > 0:
            self._cache.put(digest, verified, ttl)
        return verified

    def _parse(self, raw: bytes) -> jws.CompactSignature:
        try:
            obj = jws.extract_compact(raw, registry=self._registry)
        except (JoseError, ValueError, TypeError) as exc:
            raise _unauthenticated(Reason.MALFORMED_CREDENTIAL, type(exc).__name__) from exc
        header = obj.headers()
        if header.get("alg") not in self._rules.algorithms:
            raise _unauthenticated(Reason.ALG_NOT_ALLOWED, str(header.get("alg"))[:20])
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPES):
            raise _unauthenticated(Reason.MALFORMED_CREDENTIAL, "typ")
        if "crit" in header or "b64" in header:
            raise _unauthenticated(Reason.MALFORMED_CREDENTIAL, "crit/b64")
        return obj

    async def _key_for(self, header: dict[str, Any]) -> Key:
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise _unauthenticated(Reason.UNKNOWN_KID, "no kid")
        key = await self._jwks.get(kid)
        if key is None:
            raise _unauthenticated(Reason.UNKNOWN_KID)
        if not key_fits_alg(key, header["alg"]):
            raise _unauthenticated(Reason.KEY_ALG_MISMATCH, f"{key.key_type} for {header['alg']}")
        return key

    def _check_claims(self, payload: bytes) -> dict[str, Any]:
        try:
            claims = json.loads(payload)
        except ValueError as exc:
            raise _unauthenticated(Reason.BAD_CLAIMS, "payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise _unauthenticated(Reason.BAD_CLAIMS, "payload is not an object")
        try:
            self._claims.validate(claims)
        except ExpiredTokenError as exc:
            raise _unauthenticated(Reason.TOKEN_EXPIRED) from exc
        except MissingClaimError as exc:
            raise _unauthenticated(Reason.BAD_CLAIMS, f"missing {exc.claim}") from exc
        except ClaimError as exc:
            raise _unauthenticated(_claim_reason(exc.claim, claims), exc.claim) from exc
        if claims["exp"] - claims["iat"] > self._rules.max_lifetime:
            raise _unauthenticated(Reason.TOKEN_LIFETIME_TOO_LONG)
        return claims

    def _map(self, claims: dict[str, Any], digest: bytes) -> VerifiedToken:
        rules = self._rules
        subject = _claim(claims, rules.subject_claim)
        if not isinstance(subject, str) or not subject or len(subject) > 256:
            raise _unauthenticated(Reason.BAD_CLAIMS, "subject")
        tier = _claim(claims, rules.tier_claim)
        if tier is not None and not isinstance(tier, str):
            raise _unauthenticated(Reason.BAD_CLAIMS, "tier")
        return VerifiedToken(
            subject=subject,
            roles=_strings(_claim(claims, rules.roles_claim), "roles"),
            projects=_strings(_claim(claims, rules.projects_claim), "projects"),
            tier=tier or "",
            exp=int(claims["exp"]),
            token_hash=digest.hex(),
            ath=b64url(digest),
            jkt=_binding(claims),
        )


def _numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _claim_reason(claim: str, claims: dict[str, Any]) -> Reason:
    if claim == "iss":
        return Reason.WRONG_ISSUER
    if claim == "aud":
        return Reason.WRONG_AUDIENCE
    if claim in ("nbf", "iat") and _numeric(claims.get(claim)):
        return Reason.TOKEN_NOT_YET_VALID
    return Reason.BAD_CLAIMS
