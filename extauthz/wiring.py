"""build_service(settings): the one place that names concrete classes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from extauthz.analytics.events import QueryEmitter
from extauthz.audit.chain import load_signing_key
from extauthz.audit.spool import Spool
from extauthz.audit.writer import AuditWriter, adopt_orphans
from extauthz.authn.apikeys import ApiKeyAuthenticator, KeyStore
from extauthz.authn.authenticator import Authenticator, TokenAuthenticator
from extauthz.authn.devices import DeviceRegistry, DeviceStore
from extauthz.authn.dpop import NonceIssuer, ProofRules, ProofVerifier
from extauthz.authn.jwks import JwksSource
from extauthz.authn.jwt import JwtVerifier, TokenRules
from extauthz.authn.mtls import CertificateVerifier, IdentityMap, MtlsAuthenticator, load_ca_bundle
from extauthz.decisionlog import DecisionLog
from extauthz.handler import CheckHandler
from extauthz.limits.limiter import Limiter, LimiterConfig
from extauthz.limits.throttle import ThrottleStore
from extauthz.persistence import warn_if_not_persistent
from extauthz.policy.cache import DecisionCache
from extauthz.policy.engine import PolicyEngine
from extauthz.policy.opa import OpaClient
from extauthz.policy.revision import RevisionWatcher
from extauthz.policy.rollout import StickyBucket, bucket_key
from extauthz.policy.shadow import Shadow
from extauthz.request import Forwarding
from extauthz.settings import Settings
from extauthz.threat import AutoThreat, RefusedSources, ThreatWatcher


def key_pepper(settings: Settings) -> bytes:
    """The API-key hashing secret: the setting, else a 0600 file created on first use."""
    if settings.key_pepper.get_secret_value():
        return settings.key_pepper.get_secret_value().encode()
    path: Path = settings.key_pepper_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


# One retry, and only for a connection the server closed (a pooled connection gone stale when
# Redis restarted or failed over: without it, the first decision on each such connection was a
# 503). Never for a timeout: the decision has one budget, and failing closed beats waiting. A
# command the old server had already run before it closed the connection is run again: a
# request counted twice (stricter), or a DPoP proof seen as a replay (401) — closed, not open.
_RETRY_STALE = (RedisConnectionError,)


def redis_client(settings: Settings) -> aioredis.Redis:
    if settings.redis_cluster:
        return RedisCluster.from_url(  # type: ignore[return-value]
            settings.redis_url,
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=_RETRY_STALE),
            max_connections=64,
        )
    return aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=_RETRY_STALE),
        max_connections=64,
    )


def token_authenticator(
    settings: Settings, redis: aioredis.Redis, pepper: bytes
) -> TokenAuthenticator | None:
    """JWT (+ DPoP) authentication, when an issuer JWKS is configured."""
    if not settings.jwt_jwks:
        return None
    algorithms = tuple(a.strip() for a in settings.jwt_algorithms.split(",") if a.strip())
    rules = TokenRules(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        algorithms=algorithms,
        leeway=settings.jwt_leeway,
        max_lifetime=settings.jwt_max_lifetime,
        subject_claim=settings.jwt_subject_claim,
        roles_claim=settings.jwt_roles_claim,
        projects_claim=settings.jwt_projects_claim,
        tier_claim=settings.jwt_tier_claim,
    )
    jwks = JwksSource(
        settings.jwt_jwks,
        settings.jwks_refresh_interval,
        settings.jwks_min_refresh_interval,
        settings.jwks_timeout,
    )
    nonces = None
    if settings.dpop_require_nonce:
        secret = hmac.new(pepper, b"extauthz dpop nonce", hashlib.sha256).digest()
        nonces = NonceIssuer(secret, settings.dpop_nonce_lifetime)
    proofs = ProofVerifier(
        ProofRules(algorithms, settings.dpop_window, settings.dpop_leeway),
        nonces,
    )
    devices = DeviceRegistry(
        DeviceStore(redis), settings.device_cache_ttl, settings.device_cache_size
    )
    return TokenAuthenticator(
        JwtVerifier(jwks, rules, settings.jwt_cache_size),
        proofs,
        devices,
        proof_window=settings.dpop_window + settings.dpop_leeway,
        origin=settings.dpop_origin,
    )


def mtls_authenticator(settings: Settings) -> MtlsAuthenticator:
    """mTLS identities; without a CA file every client certificate is refused."""
    certificates = None
    if settings.mtls_ca_file:
        certificates = CertificateVerifier(load_ca_bundle(Path(settings.mtls_ca_file)))
    return MtlsAuthenticator(
        certificates, IdentityMap(settings.opa_url, settings.mtls_identities_ttl)
    )


def audit_dir(settings: Settings) -> Path:
    if settings.audit_spool_dir:
        return Path(settings.audit_spool_dir)
    return settings.run_dir / "audit"


def audit_archive_dir(settings: Settings) -> Path:
    if settings.audit_archive_dir:
        return Path(settings.audit_archive_dir)
    return settings.run_dir / "audit-archive"


def audit_key_file(settings: Settings) -> Path:
    if settings.audit_signing_key_file:
        return Path(settings.audit_signing_key_file)
    return settings.run_dir / "audit-signing-key"


def audit_signing_key(settings: Settings, create: bool = True):  # type: ignore[no-untyped-def]
    return load_signing_key(
        settings.audit_signing_key.get_secret_value(), audit_key_file(settings), create
    )


def shipper_env(settings: Settings) -> dict[str, str]:
    """What the audit shipper process needs to know (it reads EXTAUTHZ_* like the service)."""
    return {
        "EXTAUTHZ_REDIS_URL": settings.redis_url,
        "EXTAUTHZ_REDIS_CLUSTER": str(settings.redis_cluster).lower(),
        "EXTAUTHZ_AUDIT_SINK_TIMEOUT": str(settings.audit_sink_timeout),
        "EXTAUTHZ_AUDIT_SEGMENT_BYTES": str(settings.audit_segment_bytes),
        "EXTAUTHZ_LOG_LEVEL": settings.log_level,
    }


def audit_writer(settings: Settings, worker_index: int = 0) -> AuditWriter:
    """Worker `worker_index`'s chain: spool <audit_dir>/w<index>, shipped to the sink. Worker
    0 also ships, in the background, spools of workers this service no longer runs."""
    writer = _audit_writer(settings, audit_dir(settings) / f"w{worker_index}")
    if worker_index == 0 and settings.audit_sink != "none":
        writer.adopt = lambda: adopt_orphans(
            audit_dir(settings), settings.workers, lambda path: _audit_writer(settings, path)
        )
    return writer


def _audit_writer(settings: Settings, directory: Path) -> AuditWriter:
    node = settings.audit_node or os.uname().nodename
    spool = Spool(directory, f"{node}-{directory.name}", settings.audit_segment_bytes)
    return AuditWriter(
        spool,
        audit_signing_key(settings),
        shipper_env(settings) if settings.audit_sink == "redis" else None,
        checkpoint_interval=settings.audit_checkpoint_interval,
        drain_timeout=settings.audit_drain_timeout,
        fsync_interval=settings.audit_fsync_interval,
        max_pending=settings.audit_max_pending_records,
        required=settings.audit_required,
    )


@dataclass
class Service:
    handler: CheckHandler
    redis: aioredis.Redis
    opa: OpaClient
    watcher: RevisionWatcher
    threat: ThreatWatcher
    shadow: Shadow | None
    decision_log: DecisionLog
    limiter: Limiter
    events: QueryEmitter | None = None

    async def start(self) -> None:
        # off the event loop: opening the audit spool may wait for its previous holder's lock
        await asyncio.to_thread(self.decision_log.start)
        await warn_if_not_persistent(self.redis)  # keys and devices must survive its restart
        await self.opa.start()
        await self.watcher.poll_once()  # a cold cache and fallback table are ready at once
        self.watcher.start()
        await self.threat.poll_once()  # the threat level, polled off the request path too
        self.threat.start()
        if self.events is not None:
            self.events.start()

    async def close(self) -> None:
        if self.events is not None:
            await self.events.stop()
        await self.threat.stop()
        await self.watcher.stop()
        if self.shadow is not None:
            await self.shadow.drain()
        await self.opa.close()
        await self.redis.aclose()
        # off the event loop: the last batch, the audit trail's signature and the shipper's drain
        await asyncio.to_thread(self.decision_log.stop)


def auto_threat(settings: Settings, redis: aioredis.Redis) -> AutoThreat | None:
    if settings.auto_threat_ratio <= 0:
        return None
    return AutoThreat(
        sources=RefusedSources(settings.auto_threat_window, settings.auto_threat_min_sources),
        store=ThrottleStore(redis, settings.source_prefix_v4, settings.source_prefix_v6),
        ratio=settings.auto_threat_ratio,
        level=settings.auto_threat_level,
        ttl=settings.auto_threat_ttl,
    )


def build_service(settings: Settings, worker_index: int = 0) -> Service:
    redis = redis_client(settings)
    pepper = key_pepper(settings)
    api_keys = ApiKeyAuthenticator(
        KeyStore(redis, pepper),
        pepper,
        cache_ttl=settings.key_cache_ttl,
        cache_size=settings.key_cache_size,
    )
    opa = OpaClient(settings.opa_url, settings.opa_decision_path, settings.opa_timeout)
    watcher = RevisionWatcher(opa, settings.revision_poll_interval, settings.revision_max_age)
    shadow = None
    if settings.shadow_decision_path:
        shadow = Shadow(
            opa,
            settings.shadow_decision_path,
            settings.shadow_sample,
            Path(settings.shadow_log),
            DecisionCache(settings.decision_cache_size, "shadow", settings.decision_cache_bytes),
            max_bytes=settings.shadow_max_bytes,
            log_max_bytes=settings.shadow_log_max_bytes,
        )
    cache = DecisionCache(settings.decision_cache_size, "enforced", settings.decision_cache_bytes)
    policy = PolicyEngine(opa, watcher, cache, shadow, StickyBucket(bucket_key(pepper)))
    if settings.audit_enabled:
        decision_log = DecisionLog(
            settings.decision_log,
            settings.audit_flush_interval,
            audit_writer(settings, worker_index),
        )
    else:
        decision_log = DecisionLog(settings.decision_log)
    watcher.on_change = decision_log.note  # policy revisions go into the audit trail
    threat = ThreatWatcher(redis, settings.threat_poll_interval, auto=auto_threat(settings, redis))
    limiter = Limiter(
        redis, settings.redis_timeout, config=LimiterConfig.from_settings(settings), threat=threat
    )
    events = None
    if settings.analytics_events:
        events = QueryEmitter(
            redis,
            shards=settings.analytics_shards,
            maxlen=settings.analytics_stream_maxlen,
            queue_size=settings.analytics_queue_size,
            max_body=settings.analytics_max_body,
            sketch_rows=settings.analytics_rows_per_event,
            v4_bits=settings.source_prefix_v4,
            v6_bits=settings.source_prefix_v6,
        )
    handler = CheckHandler(
        Authenticator(
            api_keys, token_authenticator(settings, redis, pepper), mtls_authenticator(settings)
        ),
        policy,
        limiter,
        decision_log,
        settings.max_body_bytes,
        Forwarding.parse(settings.trusted_hops, settings.trusted_proxies),
        events,
    )
    return Service(
        handler=handler,
        redis=redis,
        opa=opa,
        watcher=watcher,
        threat=threat,
        shadow=shadow,
        decision_log=decision_log,
        limiter=limiter,
        events=events,
    )
