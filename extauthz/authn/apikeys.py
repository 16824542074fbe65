"""API keys: random, shown once, stored only as a keyed hash with their principal.

A key reads `eak_<id>.<secret>`: the id (48 random bits, not secret) finds the record, the
secret (256 random bits) is checked by comparing HMAC-SHA256(pepper, key) in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from extauthz.cache import TTLCache
from extauthz.clock import Clock, system_clock
from extauthz.store.schema import KEY_INDEX, KeyFields, key_record_name
from extauthz.types import Denied, Principal, Reason, Status

F = KeyFields
PREFIX = "eak_"
_ID_HEX = 12
_DUMMY_HASH = "0" * 64


def hash_key(pepper: bytes, key: str) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()


def split_key(key: str) -> str | None:
    """The key id of a well-formed key, else None."""
    if not key.startswith(PREFIX) or len(key) > 128:
        return None
    key_id, dot, secret = key[len(PREFIX) :].partition(".")
    if not dot or len(key_id) != _ID_HEX or len(secret) < 22:
        return None
    if any(c not in "0123456789abcdef" for c in key_id):
        return None
    return key_id


def new_key() -> tuple[str, str]:
    """(key id, full key). The full key is shown once and never stored."""
    key_id = secrets.token_hex(_ID_HEX // 2)
    return key_id, f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    key_hash: str
    subject: str
    roles: tuple[str, ...]
    projects: tuple[str, ...]
    tier: str
    created: int
    expires: int  # epoch seconds; 0: never
    status: str  # active | revoked
    cidrs: tuple[str, ...] = ()  # client networks the key may be used from; (): anywhere
    rotated_from: str = ""  # the key id this one replaced (keys rotate)

    def to_redis(self) -> dict[str, str]:
        return {
            F.CIDRS: ",".join(self.cidrs),
            F.ROTATED_FROM: self.rotated_from,
            F.HASH: self.key_hash,
            F.SUBJECT: self.subject,
            F.ROLES: ",".join(self.roles),
            F.PROJECTS: ",".join(self.projects),
            F.TIER: self.tier,
            F.CREATED: str(self.created),
            F.EXPIRES: str(self.expires),
            F.STATUS: self.status,
        }

    @classmethod
    def from_redis(cls, key_id: str, raw: dict[bytes, bytes]) -> KeyRecord:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            key_id=key_id,
            key_hash=f.get(F.HASH, ""),
            subject=f.get(F.SUBJECT, ""),
            roles=tuple(r for r in f.get(F.ROLES, "").split(",") if r),
            projects=tuple(p for p in f.get(F.PROJECTS, "").split(",") if p),
            tier=f.get(F.TIER, ""),
            created=int(f.get(F.CREATED) or 0),
            expires=int(f.get(F.EXPIRES) or 0),
            status=f.get(F.STATUS, F.REVOKED),
            cidrs=tuple(c for c in f.get(F.CIDRS, "").split(",") if c),
            rotated_from=f.get(F.ROTATED_FROM, ""),
        )


def parse_cidrs(cidrs: tuple[str, ...]) -> tuple[str, ...]:
    """Normalised CIDR ranges; ValueError for anything that is not one."""
    return tuple(str(ipaddress.ip_network(c.strip(), strict=False)) for c in cidrs if c.strip())


def source_allowed(cidrs: tuple[str, ...], source_ip: str) -> bool:
    """Whether `source_ip` (the peer address Envoy reports) is inside one of `cidrs`."""
    if not cidrs:
        return True
    try:
        address = ipaddress.ip_address(source_ip)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(c) for c in cidrs)


class KeyStore:
    """API-key records in Redis (the CLI writes, the service reads)."""

    def __init__(self, redis: aioredis.Redis, pepper: bytes, clock: Clock = system_clock) -> None:
        self._redis = redis
        self._pepper = pepper
        self._clock = clock

    async def create(
        self,
        subject: str,
        roles: tuple[str, ...],
        projects: tuple[str, ...],
        tier: str,
        expires_in: int = 0,
        cidrs: tuple[str, ...] = (),
    ) -> tuple[KeyRecord, str]:
        key_id, key = new_key()
        now = int(self._clock())
        record = KeyRecord(
            key_id=key_id,
            key_hash=hash_key(self._pepper, key),
            subject=subject,
            roles=roles,
            projects=projects,
            tier=tier,
            created=now,
            expires=now + expires_in if expires_in else 0,
            status=F.ACTIVE,
            cidrs=parse_cidrs(cidrs),
        )
        await self._put(record)
        return record, key

    async def rotate(
        self, key_id: str, overlap: int, expires_in: int = 0
    ) -> tuple[KeyRecord, KeyRecord, str] | None:
        """A new key for the same principal; the old one stays valid for `overlap` seconds
        more (or until its own expiry, if sooner). (old record, new record, new key) or None."""
        old = await self.get(key_id)
        if old is None or old.status != F.ACTIVE:
            return None
        now = int(self._clock())
        new_id, key = new_key()
        new = replace(
            old,
            key_id=new_id,
            key_hash=hash_key(self._pepper, key),
            created=now,
            expires=now + expires_in if expires_in else 0,
            rotated_from=old.key_id,
        )
        ends = now + overlap
        old = replace(old, expires=min(old.expires, ends) if old.expires else ends)
        await self._put(new)
        await self._redis.hset(key_record_name(old.key_id), F.EXPIRES, str(old.expires))
        return old, new, key

    async def _put(self, record: KeyRecord) -> None:
        key_id = record.key_id
        name = key_record_name(key_id)
        # Two slots on Redis Cluster (the record shares its key's hash tag; the listing index is
        # global), so no MULTI: the record first, then the index that `keys list` reads.
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(name, mapping=record.to_redis())
            pipe.sadd(KEY_INDEX, key_id)
            await pipe.execute()

    async def get(self, key_id: str) -> KeyRecord | None:
        raw = await self._redis.hgetall(key_record_name(key_id))
        return KeyRecord.from_redis(key_id, raw) if raw else None

    async def revoke(self, key_id: str) -> bool:
        name = key_record_name(key_id)
        if not await self._redis.exists(name):
            return False
        await self._redis.hset(name, F.STATUS, F.REVOKED)
        return True

    async def list(self) -> list[KeyRecord]:
        ids = sorted(m.decode() for m in await self._redis.smembers(KEY_INDEX))
        records = [await self.get(key_id) for key_id in ids]
        return [r for r in records if r is not None]


def credential_from_headers(headers: dict[str, str]) -> str | None:
    """The API key a request presents, if any (Authorization: Bearer eak_…, or x-api-key)."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip().startswith(PREFIX):
        return value.strip()
    return headers.get("x-api-key") or None


class ApiKeyAuthenticator:
    """RequestView → Principal for API keys, or Denied(401)."""

    def __init__(
        self,
        store: KeyStore,
        pepper: bytes,
        cache_ttl: float = 30.0,
        cache_size: int = 10_000,
        clock: Clock = system_clock,
    ) -> None:
        self._store = store
        self._pepper = pepper
        self._clock = clock
        self._cache: TTLCache[str, KeyRecord] = TTLCache(cache_size, cache_ttl, clock)

    async def authenticate(self, key: str, source_ip: str = "") -> Principal:
        key_id = split_key(key)
        presented = hash_key(self._pepper, key)
        if key_id is None:
            raise Denied(Status.UNAUTHENTICATED, Reason.MALFORMED_CREDENTIAL)
        record = self._cache.get(key_id)
        if record is None:
            try:
                record = await self._store.get(key_id)
            except (RedisError, OSError, TimeoutError) as exc:
                raise Denied(
                    Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, type(exc).__name__
                ) from exc
            if record is not None:
                self._cache.put(key_id, record)
        # Compare even when the id is unknown, so both paths do the same work.
        matches = hmac.compare_digest(presented, record.key_hash if record else _DUMMY_HASH)
        if record is None:
            raise Denied(Status.UNAUTHENTICATED, Reason.UNKNOWN_KEY)
        if not matches:
            raise Denied(Status.UNAUTHENTICATED, Reason.BAD_KEY_SECRET)
        if record.status != F.ACTIVE:
            raise Denied(Status.UNAUTHENTICATED, Reason.KEY_REVOKED)
        if record.expires and record.expires <= self._clock():
            raise Denied(Status.UNAUTHENTICATED, Reason.KEY_EXPIRED)
        if not source_allowed(record.cidrs, source_ip):
            raise Denied(Status.UNAUTHENTICATED, Reason.KEY_SOURCE_NOT_ALLOWED, source_ip)
        return Principal(
            subject=record.subject,
            roles=record.roles,
            projects=record.projects,
            tier=record.tier,
            credential="api_key",
            credential_id=key_id,
            state_key=key_record_name(key_id),
        )
