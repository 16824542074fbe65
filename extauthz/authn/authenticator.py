"""Stage 2: find the credential a request presents and turn it into a Principal.

Which credential counts, first match wins:

1. ``Authorization: Bearer eak_…``            API key
2. ``Authorization: Bearer <jwt>``            JWT access token (must not be DPoP-bound)
3. ``Authorization: DPoP <jwt>`` + ``DPoP``   DPoP-bound JWT with its proof (RFC 9449)
4. ``x-api-key: eak_…``                       API key
5. a client certificate (mTLS listener)       service identity
Any other ``Authorization`` value is malformed; nothing at all is no credential. Every failure
is the same 401 to the client; the reason code goes to the decision log.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from extauthz.authn.apikeys import PREFIX, ApiKeyAuthenticator
from extauthz.authn.devices import DeviceRegistry
from extauthz.authn.dpop import ProofVerifier, parse_origins, replay_key, request_uris
from extauthz.authn.jwt import JwtVerifier, VerifiedToken
from extauthz.authn.mtls import MtlsAuthenticator
from extauthz.store.schema import subject_tag
from extauthz.types import Denied, Principal, Reason, RequestView, Status

log = logging.getLogger(__name__)

# Credentials never travel past the gateway.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "dpop")


def _unauthenticated(reason: Reason, detail: str = "") -> Denied:
    return Denied(Status.UNAUTHENTICATED, reason, detail)


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2 and " " not in value


class TokenAuthenticator:
    """JWT access tokens, alone (`jwt`) or bound to a DPoP key and proved (`jwt+dpop`)."""

    def __init__(
        self,
        verifier: JwtVerifier,
        proofs: ProofVerifier,
        devices: DeviceRegistry,
        proof_window: int,
        origin: str = "",
    ) -> None:
        self._verifier = verifier
        self._proofs = proofs
        self._devices = devices
        self._replay_ttl = proof_window
        # the public origins proofs are made for (EXTAUTHZ_DPOP_ORIGIN); a bad one stops start-up
        self._origins = parse_origins(origin)
        if not self._origins:
            log.warning("EXTAUTHZ_DPOP_ORIGIN is empty: every DPoP request is refused (401)")

    async def authenticate(self, scheme: str, token: str, view: RequestView) -> Principal:
        verified = await self._verifier.verify(token)
        if scheme == "bearer":
            if verified.jkt:  # RFC 9449 §7.2: a bound token is no bearer token
                raise _unauthenticated(Reason.DPOP_BOUND_TOKEN_AS_BEARER)
            return _principal(verified, "jwt")
        if not verified.jkt:
            raise _unauthenticated(Reason.DPOP_TOKEN_NOT_BOUND)
        header = view.headers.get("dpop")
        if header is None:
            raise _unauthenticated(Reason.DPOP_PROOF_MISSING)
        if not self._origins:  # htu can only be checked against origins the operator named
            raise _unauthenticated(Reason.DPOP_ORIGIN_NOT_CONFIGURED)
        proof = self._proofs.verify(
            header,
            method=view.method,
            uri=request_uris(self._origins, view.path),
            access_token_ath=verified.ath,
            token_jkt=verified.jkt,
        )
        device = await self._devices.lookup(verified.subject, proof.jkt)
        device = replace(
            device,
            replay_key=replay_key(verified.subject, proof),
            replay_ttl=self._replay_ttl,
        )
        return replace(_principal(verified, "jwt+dpop"), device=device)


def _principal(verified: VerifiedToken, credential: str) -> Principal:
    return Principal(
        subject=verified.subject,
        roles=verified.roles,
        projects=verified.projects,
        tier=verified.tier,
        credential=credential,
        credential_id=verified.token_hash[:12],
        rate_key=subject_tag(verified.subject),  # quota per subject, not per token
    )


class Authenticator:
    """Dispatches on the credential kind (see the module docstring)."""

    def __init__(
        self,
        api_keys: ApiKeyAuthenticator,
        tokens: TokenAuthenticator | None = None,
        mtls: MtlsAuthenticator | None = None,
    ) -> None:
        self._api_keys = api_keys
        self._tokens = tokens
        self._mtls = mtls

    async def authenticate(self, view: RequestView) -> Principal:
        headers = view.headers
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            scheme, value = scheme.lower(), value.strip()
            if scheme == "bearer" and value.startswith(PREFIX):
                return await self._api_keys.authenticate(value, view.source_ip)
            if scheme in ("bearer", "dpop") and _looks_like_jwt(value):
                if self._tokens is None:
                    raise _unauthenticated(Reason.JWT_NOT_CONFIGURED)
                return await self._tokens.authenticate(scheme, value, view)
        key = headers.get("x-api-key")
        if key:
            return await self._api_keys.authenticate(key, view.source_ip)
        if auth is not None:
            raise _unauthenticated(Reason.MALFORMED_CREDENTIAL)
        if view.peer_certificate:
            if self._mtls is None:
                raise _unauthenticated(Reason.MTLS_NOT_CONFIGURED)
            return await self._mtls.authenticate(view)
        raise _unauthenticated(Reason.NO_CREDENTIAL)
