"""The device registry: DPoP public keys enrolled by RFC 7638 thumbprint for an owner subject,
with a trust level (registered < managed < attested), an optional expiry and revocation.

Records live in Redis at `ea:{sub:<hash>}:dev:<thumbprint>`: the same hash tag as the subject's
rate-limit counters and DPoP jtis, so the "still active?" re-check rides in the decision's one
Lua call. A key that is not enrolled for the token's subject (or whose enrollment expired) is
trust "none": policy decides what that may reach; it is never an error. A revoked enrollment is
a 401 (device_revoked), immediately, even while its record is cached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from extauthz.authn.jwks import public_key_from_jwk
from extauthz.cache import TTLCache
from extauthz.clock import Clock, system_clock
from extauthz.store.schema import DEVICE_INDEX, DeviceFields, device_record_name
from extauthz.types import NO_DEVICE, Denied, Device, Reason, Status

F = DeviceFields
TRUST_LEVELS = ("registered", "managed", "attested")  # weakest first; "none" below them all


def thumbprint_of(jwk: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(RFC 7638 thumbprint, public JWK) of a JWK, public or private; ValueError otherwise."""
    key = public_key_from_jwk(jwk)
    public = key.as_dict(private=False)
    public.pop("d", None)
    return key.thumbprint(), public


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    subject: str
    thumbprint: str
    trust: str
    created: int
    expires: int  # epoch seconds; 0: never
    status: str  # active | revoked
    jwk: str = ""  # the public JWK (JSON), for audit

    def to_redis(self) -> dict[str, str]:
        return {
            F.SUBJECT: self.subject,
            F.THUMBPRINT: self.thumbprint,
            F.TRUST: self.trust,
            F.CREATED: str(self.created),
            F.EXPIRES: str(self.expires),
            F.STATUS: self.status,
            F.JWK: self.jwk,
        }

    @classmethod
    def from_redis(cls, raw: dict[bytes, bytes]) -> DeviceRecord:
        f = {k.decode(): v.decode() for k, v in raw.items()}
        return cls(
            subject=f.get(F.SUBJECT, ""),
            thumbprint=f.get(F.THUMBPRINT, ""),
            trust=f.get(F.TRUST, ""),
            created=int(f.get(F.CREATED) or 0),
            expires=int(f.get(F.EXPIRES) or 0),
            status=f.get(F.STATUS, F.REVOKED),
            jwk=f.get(F.JWK, ""),
        )

    def expired(self, now: float) -> bool:
        return bool(self.expires) and self.expires <= now


class DeviceStore:
    """Device records in Redis (the CLI writes, the service reads)."""

    def __init__(self, redis: aioredis.Redis, clock: Clock = system_clock) -> None:
        self._redis = redis
        self._clock = clock

    async def enroll(
        self, subject: str, jwk: dict[str, Any], trust: str, expires_in: int = 0
    ) -> DeviceRecord:
        """Enroll (or re-enroll, replacing trust and expiry) a key for `subject`."""
        if trust not in TRUST_LEVELS:
            raise ValueError(f"trust must be one of {', '.join(TRUST_LEVELS)}")
        if not subject:
            raise ValueError("subject is required")
        thumbprint, public = thumbprint_of(jwk)
        now = int(self._clock())
        record = DeviceRecord(
            subject=subject,
            thumbprint=thumbprint,
            trust=trust,
            created=now,
            expires=now + expires_in if expires_in else 0,
            status=F.ACTIVE,
            jwk=json.dumps(public, sort_keys=True),
        )
        name = device_record_name(subject, thumbprint)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(name)
            pipe.hset(name, mapping=record.to_redis())
            pipe.sadd(DEVICE_INDEX, name)
            await pipe.execute()
        return record

    async def get(self, subject: str, thumbprint: str) -> DeviceRecord | None:
        raw = await self._redis.hgetall(device_record_name(subject, thumbprint))
        return DeviceRecord.from_redis(raw) if raw else None

    async def list(self) -> list[DeviceRecord]:
        names = sorted(m.decode() for m in await self._redis.smembers(DEVICE_INDEX))
        records = []
        for name in names:
            raw = await self._redis.hgetall(name)
            if raw:
                records.append(DeviceRecord.from_redis(raw))
        return records

    async def revoke(self, thumbprint: str, subject: str | None = None) -> int:
        """Revoke every enrollment of `thumbprint` (only `subject`'s, if given); how many."""
        revoked = 0
        for record in await self.list():
            if record.thumbprint != thumbprint or (subject and record.subject != subject):
                continue
            await self._redis.hset(
                device_record_name(record.subject, thumbprint),
                F.STATUS,
                F.REVOKED,
            )
            revoked += 1
        return revoked


_NOT_ENROLLED = DeviceRecord("", "", "none", 0, 0, "absent")


class DeviceRegistry:
    """(subject, thumbprint) → Device. Records are cached in-process for `cache_ttl` seconds
    (enrollment and trust changes show within that); revocation is re-checked on every allowed
    request inside the decision's Lua call."""

    def __init__(
        self,
        store: DeviceStore,
        cache_ttl: float = 30.0,
        cache_size: int = 10_000,
        clock: Clock = system_clock,
    ) -> None:
        self._store = store
        self._clock = clock
        self._cache: TTLCache[tuple[str, str], DeviceRecord] = TTLCache(
            cache_size, cache_ttl, clock
        )

    async def lookup(self, subject: str, thumbprint: str) -> Device:
        record = self._cache.get((subject, thumbprint))
        if record is None:
            try:
                record = await self._store.get(subject, thumbprint) or _NOT_ENROLLED
            except (RedisError, OSError, TimeoutError) as exc:
                raise Denied(
                    Status.UNAVAILABLE, Reason.REDIS_UNAVAILABLE, type(exc).__name__
                ) from exc
            self._cache.put((subject, thumbprint), record)
        if record is _NOT_ENROLLED or record.expired(self._clock()):
            return Device(thumbprint=thumbprint, trust=NO_DEVICE.trust)
        if record.status != F.ACTIVE:
            raise Denied(Status.UNAUTHENTICATED, Reason.DEVICE_REVOKED)
        trust = record.trust if record.trust in TRUST_LEVELS else NO_DEVICE.trust
        return Device(
            thumbprint=thumbprint,
            trust=trust,
            state_key=device_record_name(subject, thumbprint),
        )
