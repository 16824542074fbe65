"""DPoP proofs (RFC 9449): the checks of §4.3, in the RFC's order, each with its reason code.

To validate a DPoP proof, the receiving server MUST ensure the following:

 1. there is not more than one DPoP HTTP request header field;
 2. the DPoP HTTP request header field value is a single and well-formed JWT;
 3. all required claims per §4.2 are contained in the JWT;
 4. the typ JOSE Header Parameter has the value dpop+jwt;
 5. the alg JOSE Header Parameter indicates a registered asymmetric digital signature
    algorithm, is not none, is supported by the application, and is acceptable per local policy;
 6. the JWT signature verifies with the public key contained in the jwk JOSE Header Parameter;
 7. the jwk JOSE Header Parameter does not contain a private key;
 8. the htm claim matches the HTTP method of the current request;
 9. the htu claim matches the HTTP URI value for the HTTP request in which the JWT was
    received, ignoring any query and fragment parts;
10. if the server provided a nonce value to the client, the nonce claim matches it;
11. the creation time of the JWT, as determined by the iat claim, is within an acceptable window;
12. if presented to a protected resource with an access token: the ath claim equals the hash of
    that token, and the public key the token is bound to (cnf.jkt) matches the jwk of the proof.

The ``jti`` replay check (§11.1) is not here: it rides in the decision's single Redis call
(limits/lua/check_and_consume.lua), keyed by `replay_key`.

How ``htu`` is matched (check 9): against ``<origin><path>`` for each public origin the
operator configured (``EXTAUTHZ_DPOP_ORIGIN``, comma-separated), never against the request's own
``Host``/``:scheme``: those are the client's to choose, so a proof made for another origin would
pass if the client just sent that Host (RFC 9449 §4.3 binds a proof to *this* resource). Envoy's
virtual host answers every domain (``domains: ["*"]``) and behind a load balancer or CDN the
gateway cannot know its public names, so only the operator can state them; without them, DPoP
is refused (``dpop_origin_not_configured``). The path is the one Envoy normalised (normalize_path,
merge_slashes), which is what the model server gets. Both sides are compared after RFC 3986
§6.2.2/§6.2.3 normalisation: scheme and host lower-cased, default port dropped, empty path as
"/". A client that signs an unnormalised path (``//v2/...``, ``/./``) fails check 9.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import Key

from extauthz.authn.jwks import public_key_from_jwk
from extauthz.authn.jwt import (
    AllowListRegistry,
    b64url,
    key_fits_alg,
    verify_signature,
)
from extauthz.cache import TTLCache
from extauthz.clock import Clock, system_clock
from extauthz.store import schema
from extauthz.types import Denied, Reason, Status

MAX_PROOF_BYTES = 4096
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _invalid(reason: Reason, detail: str = "") -> Denied:
    return Denied(Status.UNAUTHENTICATED, reason, detail)


@dataclass(frozen=True, slots=True)
class ProofRules:
    """Local policy for proofs (from the settings)."""

    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    window: int = 60  # seconds a proof is accepted after its iat (and its jti remembered)
    leeway: int = 5  # seconds a proof's iat may lie in the future (clock skew)


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof that passed checks 1–12."""

    jkt: str  # RFC 7638 thumbprint of the proof's key
    jti: str
    iat: int


class NonceIssuer:
    """Stateless server nonces (RFC 9449 §8): base64url(issued-at ‖ HMAC(secret, issued-at)),
    good for `lifetime` seconds, valid on every replica sharing the secret."""

    def __init__(self, secret: bytes, lifetime: int = 300, clock: Clock = system_clock) -> None:
        self._secret = secret
        self._lifetime = lifetime
        self._clock = clock

    def _mac(self, stamp: bytes) -> bytes:
        return hmac.new(self._secret, b"dpop-nonce" + stamp, hashlib.sha256).digest()[:16]

    def issue(self) -> str:
        stamp = struct.pack(">Q", int(self._clock()))
        return b64url(stamp + self._mac(stamp))

    def valid(self, nonce: object) -> bool:
        if not isinstance(nonce, str) or len(nonce) != 32:
            return False
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except ValueError:
            return False
        if len(raw) != 24:
            return False
        stamp, mac = raw[:8], raw[8:]
        if not hmac.compare_digest(mac, self._mac(stamp)):
            return False
        age = self._clock() - struct.unpack(">Q", stamp)[0]
        return -5 <= age <= self._lifetime


@functools.lru_cache(maxsize=4096)
def normalize_uri(uri: str) -> str | None:
    """RFC 3986 §6.2.2–6.2.3 normal form of an http(s) URI without query and fragment."""
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def parse_origins(text: str) -> tuple[str, ...]:
    """EXTAUTHZ_DPOP_ORIGIN → normalised origins (``https://api.example.com``, comma-separated).
    Raises ValueError on anything that is not an http(s) origin, so a typo stops the start-up."""
    origins = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        parts = normalize_uri(item)
        if parts is None or not parts.endswith("/") or parts.count("/") != 3:
            raise ValueError(f"not an http(s) origin (scheme://host[:port]): {item!r}")
        if "@" in item or "?" in item or "#" in item:
            raise ValueError(f"an origin has no userinfo, query or fragment: {item!r}")
        origins.append(parts.rstrip("/"))
    return tuple(dict.fromkeys(origins))


def request_uris(origins: tuple[str, ...], path: str) -> tuple[str, ...]:
    """The URIs a request is known by, one per public origin (see the module docstring)."""
    return tuple(origin + path for origin in origins)


def replay_key(subject: str, proof: Proof) -> str:
    """Redis key remembering a proof's jti; shares the subject's hash tag (one Lua call)."""
    return schema.replay_key(subject, proof.jkt, proof.jti)


class ProofVerifier:
    """One DPoP header value → Proof, or Denied(401) with the failing check's reason."""

    def __init__(
        self,
        rules: ProofRules,
        nonces: NonceIssuer | None = None,
        clock: Clock = system_clock,
        key_cache_size: int = 10_000,
    ) -> None:
        self._rules = rules
        self._nonces = nonces  # None: no server nonce required
        self._clock = clock
        self._registry = AllowListRegistry(rules.algorithms)
        # A device sends the same protected header (typ, alg, jwk) with every proof: keep its
        # imported key and thumbprint, keyed by those exact bytes (bounded LRU).
        self._keys: TTLCache[bytes, tuple[Key, str]] = TTLCache(key_cache_size, 3600.0, clock)

    def _key(self, header_segment: bytes, jwk_member: dict[str, Any]) -> tuple[Key, str]:
        cached = self._keys.get(header_segment)
        if cached is None:
            key = public_key_from_jwk(jwk_member)
            cached = (key, key.thumbprint())
            self._keys.put(header_segment, cached)
        return cached

    def nonce_challenge(self, detail: str) -> Denied:
        """401 with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a fresh DPoP-Nonce."""
        assert self._nonces is not None
        return Denied(
            Status.UNAUTHENTICATED,
            Reason.DPOP_NONCE_REQUIRED,
            detail,
            headers=(
                ("www-authenticate", 'DPoP error="use_dpop_nonce"'),
                ("dpop-nonce", self._nonces.issue()),
            ),
        )

    def verify(
        self,
        header_value: str,
        method: str,
        uri: str | tuple[str, ...],
        access_token_ath: str,
        token_jkt: str,
    ) -> Proof:
        # 1. not more than one DPoP header: Envoy joins repeated headers with ",", which a
        #    compact JWS never contains.
        if "," in header_value:
            raise _invalid(Reason.DPOP_MULTIPLE_PROOFS)
        # 2. a single, well-formed JWT
        raw = header_value.strip().encode()
        if len(raw) > MAX_PROOF_BYTES or raw.count(b".") != 2:
            raise _invalid(Reason.DPOP_MALFORMED, "not a compact JWS")
        try:
            obj = jws.extract_compact(raw, registry=self._registry)
            claims = json.loads(obj.payload)
        except (JoseError, ValueError, TypeError) as exc:
            raise _invalid(Reason.DPOP_MALFORMED, type(exc).__name__) from exc
        header = obj.headers()
        # 3. every required header parameter and claim (§4.2), with the right types
        _require_members(header, claims, nonce_required=self._nonces is not None)
        # 4. typ
        if header["typ"] != "dpop+jwt":
            raise _invalid(Reason.DPOP_BAD_TYP)
        # 5. alg: asymmetric, on the allow-list (never none, never HMAC)
        if header["alg"] not in self._rules.algorithms:
            raise _invalid(Reason.DPOP_ALG_NOT_ALLOWED, str(header["alg"])[:20])
        # 7 (before 6: a private key is never even imported). jwk carries no private member
        jwk_member: dict[str, Any] = header["jwk"]
        if _PRIVATE_MEMBERS & jwk_member.keys():
            raise _invalid(Reason.DPOP_PRIVATE_KEY)
        # 6. the signature verifies with the jwk
        try:
            key, jkt = self._key(obj.segments["header"], jwk_member)
        except ValueError as exc:
            raise _invalid(Reason.DPOP_MALFORMED, "jwk") from exc
        if not key_fits_alg(key, header["alg"]):
            raise _invalid(Reason.DPOP_BAD_SIGNATURE, "key does not fit alg")
        valid, why = verify_signature(obj, key, self._registry)
        if not valid:
            raise _invalid(Reason.DPOP_BAD_SIGNATURE, why)
        # 8. htm
        if not hmac.compare_digest(claims["htm"].encode(), method.encode()):
            raise _invalid(Reason.DPOP_HTM_MISMATCH)
        # 9. htu, ignoring query and fragment: the request's URI under one of its public origins
        htu = normalize_uri(claims["htu"])
        uris = (uri,) if isinstance(uri, str) else uri
        if htu is None or all(normalize_uri(u) != htu for u in uris):
            raise _invalid(Reason.DPOP_HTU_MISMATCH)
        # 10. the server nonce, when this server requires one
        if self._nonces is not None and not self._nonces.valid(claims.get("nonce")):
            raise self.nonce_challenge("missing or stale nonce")
        # 11. iat within the acceptance window
        now = self._clock()
        iat = claims["iat"]
        if iat < now - self._rules.window or iat > now + self._rules.leeway:
            raise _invalid(Reason.DPOP_IAT_OUT_OF_WINDOW, f"iat {int(iat - now):+d}s")
        # 12. ath = base64url(SHA-256(access token)); key thumbprint = the token's cnf.jkt
        if not hmac.compare_digest(claims["ath"].encode(), access_token_ath.encode()):
            raise _invalid(Reason.DPOP_ATH_MISMATCH)
        if not hmac.compare_digest(jkt.encode(), token_jkt.encode()):
            raise _invalid(Reason.DPOP_KEY_MISMATCH)
        return Proof(jkt=jkt, jti=claims["jti"], iat=int(iat))


def _require_members(header: dict[str, Any], claims: Any, nonce_required: bool) -> None:
    """Check 3: typ, alg, jwk in the header; jti, htm, htu, iat, ath in the claims (ath: this
    service only takes proofs together with an access token); nonce when required."""
    if not isinstance(claims, dict):
        raise _invalid(Reason.DPOP_MALFORMED, "claims are not an object")
    if "crit" in header or "b64" in header:
        raise _invalid(Reason.DPOP_MALFORMED, "crit/b64")
    for name in ("typ", "alg"):
        if not isinstance(header.get(name), str):
            raise _invalid(Reason.DPOP_MALFORMED, f"header {name}")
    if not isinstance(header.get("jwk"), dict):
        raise _invalid(Reason.DPOP_MALFORMED, "header jwk")
    for name in ("jti", "htm", "htu", "ath"):
        value = claims.get(name)
        if not isinstance(value, str) or not value or len(value) > 2048:
            raise _invalid(Reason.DPOP_MALFORMED, f"claim {name}")
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool) or iat != iat:
        raise _invalid(Reason.DPOP_MALFORMED, "claim iat")
    if nonce_required and "nonce" in claims and not isinstance(claims["nonce"], str):
        raise _invalid(Reason.DPOP_MALFORMED, "claim nonce")
