"""mTLS service identities: the client certificate Envoy forwards → a Principal.

Envoy's mTLS listener already refuses a handshake without a client certificate from the
configured CA. The service does not take Envoy's word for it: it verifies the forwarded leaf
(`attributes.source.certificate`) against the same CA again (defence in depth: a listener
misconfigured to accept any certificate must not turn a self-signed certificate into a service
identity), then names the peer by its first `spiffe://` URI SAN, else its first URI SAN, else
its first DNS SAN.

Which roles, projects and tier a name gets is policy data: `data.extauthz.mtls_identities`
(`rego/extauthz/mtls_identities/data.json`), fetched from OPA with one GET and cached for a few
seconds, so the policy sees an ordinary principal (credential `mtls`) and every rule, quota and
fail-open table applies unchanged. An identity missing from that map is refused (401).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from extauthz.cache import TTLCache
from extauthz.clock import Clock, system_clock
from extauthz.types import Denied, Principal, Reason, RequestView, Status

log = logging.getLogger(__name__)

IDENTITIES_PATH = "extauthz/mtls_identities"
_MAX_CACHE_SECONDS = 300.0


def _unauthenticated(reason: Reason, detail: str = "") -> Denied:
    return Denied(Status.UNAUTHENTICATED, reason, detail)


def load_ca_bundle(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def identity_of(names: list[x509.GeneralName]) -> str:
    """URI SAN (spiffe:// first), else DNS SAN; "" when the certificate names neither."""
    uris = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    for uri in uris:
        if uri.startswith("spiffe://"):
            return uri
    if uris:
        return uris[0]
    dns = [n.value for n in names if isinstance(n, x509.DNSName)]
    return dns[0] if dns else ""


@dataclass(frozen=True, slots=True)
class VerifiedPeer:
    identity: str
    not_after: float


class CertificateVerifier:
    """A leaf certificate (PEM) → its identity, if it chains to the CA bundle right now.
    Results are cached by the certificate's SHA-256 until it expires (at most 5 minutes)."""

    def __init__(
        self,
        ca_certs: list[x509.Certificate],
        cache_size: int = 10_000,
        clock: Clock = system_clock,
    ) -> None:
        self._store = Store(ca_certs)
        self._clock = clock
        self._cache: TTLCache[bytes, VerifiedPeer] = TTLCache(cache_size, _MAX_CACHE_SECONDS, clock)

    def verify(self, pem: str) -> VerifiedPeer:
        raw = pem.encode()
        digest = hashlib.sha256(raw).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        now = self._clock()
        try:
            leaf = x509.load_pem_x509_certificate(raw)
            verifier = (
                PolicyBuilder()
                .store(self._store)
                .time(datetime.datetime.fromtimestamp(now, datetime.UTC))
                .build_client_verifier()
            )
            verified = verifier.verify(leaf, [])
        except (ValueError, VerificationError) as exc:
            raise _unauthenticated(Reason.MTLS_UNTRUSTED_CERT, type(exc).__name__) from exc
        identity = identity_of(list(verified.subjects or []))
        if not identity:
            raise _unauthenticated(Reason.MTLS_NO_IDENTITY)
        peer = VerifiedPeer(identity, leaf.not_valid_after_utc.timestamp())
        self._cache.put(digest, peer, min(_MAX_CACHE_SECONDS, peer.not_after - now))
        return peer


class IdentityMap:
    """`data.extauthz.mtls_identities` from OPA: identity → {roles, projects, tier}.

    Fetched with one GET, kept `ttl` seconds; a failed refresh keeps the map it had. With no
    map at all (OPA down since start), mTLS requests fail closed with 503."""

    def __init__(
        self, opa_url: str, ttl: float = 5.0, timeout: float = 0.5, clock: Clock = system_clock
    ) -> None:
        self._url = f"{opa_url.rstrip('/')}/v1/data/{IDENTITIES_PATH}"
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._map: dict[str, Any] | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _fetch(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self._url) as resp,
        ):
            if resp.status != 200:
                raise OSError(f"HTTP {resp.status}")
            body = await resp.json(content_type=None)
        result = body.get("result", {}) if isinstance(body, dict) else None
        if not isinstance(result, dict):
            raise ValueError("mtls_identities is not an object")
        return result

    async def get(self, identity: str) -> dict[str, Any] | None:
        if self._clock() - self._fetched_at >= self._ttl:
            async with self._lock:
                if self._clock() - self._fetched_at >= self._ttl:
                    try:
                        self._map = await self._fetch()
                    except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
                        log.warning("mtls_identities from OPA: %s", exc)
                        if self._map is None:
                            raise Denied(
                                Status.UNAVAILABLE, Reason.OPA_UNAVAILABLE, "mtls_identities"
                            ) from exc
                    self._fetched_at = self._clock()
        assert self._map is not None
        entry = self._map.get(identity)
        return entry if isinstance(entry, dict) else None


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


class MtlsAuthenticator:
    """RequestView with a peer certificate → Principal(credential "mtls"), or Denied(401)."""

    def __init__(self, certificates: CertificateVerifier | None, identities: IdentityMap) -> None:
        self._certificates = certificates  # None: no CA configured, mTLS refused
        self._identities = identities

    async def authenticate(self, view: RequestView) -> Principal:
        if self._certificates is None:
            raise _unauthenticated(Reason.MTLS_NOT_CONFIGURED)
        peer = self._certificates.verify(view.peer_certificate)
        entry = await self._identities.get(peer.identity)
        if entry is None:
            raise _unauthenticated(Reason.MTLS_UNKNOWN_IDENTITY)
        tier = entry.get("tier")
        return Principal(
            subject=peer.identity,
            roles=_strings(entry.get("roles")),
            projects=_strings(entry.get("projects")),
            tier=tier if isinstance(tier, str) else "",
            credential="mtls",
            credential_id=hashlib.sha256(peer.identity.encode()).hexdigest()[:12],
        )
