"""The issuer's signing keys (RFC 7517 JWK Sets) for JWT verification (jwt.py), and the one
way to turn a JWK into a public key (also used for DPoP proofs and device enrollment)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key

from extauthz.clock import Clock, system_clock
from extauthz.types import Denied, Reason, Status

log = logging.getLogger(__name__)


def public_key_from_jwk(data: dict[str, Any]) -> Key:
    """An asymmetric key (RSA, EC, OKP) from a JWK dict; ValueError for anything else."""
    if data.get("kty") not in ("RSA", "EC", "OKP"):
        raise ValueError("not an asymmetric key")
    try:
        return JWKRegistry.import_key(data)
    except (JoseError, ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"not a usable JWK: {type(exc).__name__}") from exc


# --------------------------------------------------------------------------- JWKS


def parse_jwks(raw: bytes) -> dict[str, Key]:
    """kid → public key. Keys that are not asymmetric signing keys, or carry no kid, are
    skipped (RFC 7517 §5: ignore what is not understood); private members are dropped."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK Set")
    keys: dict[str, Key] = {}
    for item in doc["keys"]:
        if not isinstance(item, dict) or not isinstance(item.get("kid"), str):
            continue
        try:
            key = public_key_from_jwk(item)
            key = public_key_from_jwk(key.as_dict(private=False))
        except ValueError:
            log.warning("JWKS: skipping key %r (unsupported or malformed)", item.get("kid"))
            continue
        keys.setdefault(item["kid"], key)
    return keys


class JwksSource:
    """The issuer's signing keys, from a file path or an https:// URL.

    Refreshed when older than `refresh_interval` (in the background, on use) and when a token
    names an unknown kid (inline); never more often than once per `min_refresh_interval`, so a
    flood of made-up kids cannot hammer the issuer. A failed refresh keeps the keys it had."""

    def __init__(
        self,
        location: str,
        refresh_interval: float = 300.0,
        min_refresh_interval: float = 10.0,
        timeout: float = 2.0,
        clock: Clock = system_clock,
    ) -> None:
        if location.startswith("http://"):
            raise ValueError("a JWKS URL must be https://")
        self._location = location
        self._interval = refresh_interval
        self._min_interval = min_refresh_interval
        self._timeout = timeout
        self._clock = clock
        self._keys: dict[str, Key] | None = None
        self._loaded_at = float("-inf")
        self._attempted_at = float("-inf")
        self._inflight: asyncio.Task[None] | None = None

    async def _fetch(self) -> bytes:
        if self._location.startswith("https://"):
            timeout = aiohttp.ClientTimeout(total=self._timeout)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(self._location) as resp,
            ):
                if resp.status != 200:
                    raise OSError(f"JWKS fetch: HTTP {resp.status}")
                return await resp.read()
        path = Path(self._location.removeprefix("file://"))
        return await asyncio.to_thread(path.read_bytes)

    async def _load(self) -> None:
        try:
            keys = parse_jwks(await self._fetch())
        except (OSError, ValueError, aiohttp.ClientError, TimeoutError) as exc:
            log.warning("JWKS refresh from %s failed: %s", self._location, exc)
            return
        self._keys = keys
        self._loaded_at = self._clock()

    def _start(self) -> asyncio.Task[None]:
        self._attempted_at = self._clock()
        self._inflight = asyncio.get_running_loop().create_task(self._load())
        return self._inflight

    async def refresh(self) -> None:
        """Reload now (whatever the rate limit), or join a reload already running."""
        task = self._inflight
        if task is None or task.done():
            task = self._start()
        await asyncio.shield(task)

    async def _refresh_if_allowed(self) -> None:
        if self._inflight is not None and not self._inflight.done():
            await asyncio.shield(self._inflight)
        elif self._clock() - self._attempted_at >= self._min_interval:
            await asyncio.shield(self._start())

    async def get(self, kid: str) -> Key | None:
        """The key named `kid`, or None. Raises Denied(503) if no key set was ever loaded."""
        if self._keys is None:
            await self._refresh_if_allowed()
            if self._keys is None:
                raise Denied(Status.UNAVAILABLE, Reason.JWKS_UNAVAILABLE, "no key set loaded")
        elif (
            self._clock() - self._loaded_at >= self._interval
            and self._clock() - self._attempted_at >= self._min_interval
            and (self._inflight is None or self._inflight.done())
        ):
            self._start()  # on schedule, in the background: this request uses the keys it has
        key = self._keys.get(kid)
        if key is None:
            await self._refresh_if_allowed()
            key = self._keys.get(kid)
        return key
