"""Stage 3b: ask OPA for a decision document, one POST per decision on a kept-alive connection."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from extauthz.types import Denied, PolicyDecision, Reason, Status, Window


def parse_decision(body: dict[str, Any]) -> PolicyDecision:
    """OPA's response → PolicyDecision; anything malformed raises Denied(503)."""
    result = body.get("result")
    if not isinstance(result, dict):
        raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, "undefined decision")
    try:
        allow = result["allow"]
        if not isinstance(allow, bool):
            raise TypeError("allow is not a boolean")
        quota = tuple(
            Window(name=str(w["name"]), limit=int(w["limit"]), window=int(w["window"]))
            for w in result.get("quota") or ()
        )
        if any(w.limit < 0 or w.window <= 0 for w in quota):
            raise ValueError("bad quota window")
        headers = tuple((str(k).lower(), str(v)) for k, v in (result.get("headers") or {}).items())
        status = int(result.get("status") or (200 if allow else 403))
        return PolicyDecision(
            allow=allow,
            status=200 if allow else status,
            reason=str(result.get("reason") or ("ok" if allow else "denied")),
            quota=quota,
            headers=headers,
            decision_id=str(body.get("decision_id") or ""),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, str(exc)) from exc


class OpaClient:
    """POST /v1/data/<path> with {"input": ...}; errors and timeouts become Denied(503)."""

    def __init__(self, base_url: str, decision_path: str, timeout: float) -> None:
        self._url = f"{base_url.rstrip('/')}/v1/data/{decision_path.strip('/')}"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, json_serialize=json.dumps
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def decide(self, policy_input: dict[str, Any]) -> PolicyDecision:
        assert self._session is not None, "OpaClient.start() was not awaited"
        try:
            async with self._session.post(self._url, json={"input": policy_input}) as resp:
                if resp.status != 200:
                    raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, f"http {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise Denied(Status.UNAVAILABLE, Reason.OPA_UNAVAILABLE, type(exc).__name__) from exc
        if not isinstance(body, dict):
            raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, "not an object")
        return parse_decision(body)
