"""Stage 3b: ask OPA for a decision document, one POST per decision on a kept-alive connection."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import aiohttp

from extauthz.metrics import OPA_ERRORS, OPA_SECONDS
from extauthz.shaping.plan import parse_hints
from extauthz.types import DIMENSIONS, NO_PLAN, Denied, PolicyDecision, Reason, Status, Window


def parse_window(w: dict[str, Any]) -> Window:
    """One quota window of a decision (or of the fail-open table); ValueError if malformed.
    `key`: the dimensions it counts per, default ["credential"] (rego/README.md)."""
    key = w.get("key", ["credential"])
    if not isinstance(key, list) or not key or len(set(key)) != len(key):
        raise ValueError("quota window key must be a non-empty list of distinct dimensions")
    if any(k not in DIMENSIONS for k in key):
        raise ValueError(f"quota window key: dimensions are {', '.join(DIMENSIONS)}")
    window = Window(
        name=str(w["name"]), limit=int(w["limit"]), window=int(w["window"]), key=tuple(key)
    )
    if window.limit < 0 or window.window <= 0:
        raise ValueError("bad quota window")
    return window


def parse_context(context: Any) -> dict[str, Any]:
    """`quota_context`: the model's project, its Redis fail mode, its threat-level factors."""
    if not isinstance(context, dict):
        raise TypeError("quota_context is not an object")
    throttle = context.get("throttle") or {}
    if not isinstance(throttle, dict):
        raise TypeError("quota_context.throttle is not an object")
    factors = tuple(sorted((str(k), float(v)) for k, v in throttle.items()))
    if any(not 0 < f <= 1 for _, f in factors):
        raise ValueError("throttle factors are in (0, 1]")
    fail_mode = str(context.get("fail_mode") or "closed")
    return {
        "project": str(context.get("project") or ""),
        "fail_mode": "open" if fail_mode == "open" else "closed",
        "throttle": factors,
    }


# a model version Envoy routes on (a header value and a path segment): nothing else passes
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_version(value: Any) -> str:
    """The decision's `version`: "" (an unversioned model) or a version name; else ValueError."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str) or not _VERSION.match(value):
        raise ValueError("version is not a version name")
    return value


def parse_decision(body: dict[str, Any]) -> PolicyDecision:
    """OPA's response → PolicyDecision; anything malformed raises Denied(503)."""
    result = body.get("result")
    if not isinstance(result, dict):
        raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, "undefined decision")
    try:
        allow = result["allow"]
        if not isinstance(allow, bool):
            raise TypeError("allow is not a boolean")
        quota = tuple(parse_window(w) for w in result.get("quota") or ())
        context = parse_context(result.get("quota_context") or {})
        headers = tuple((str(k).lower(), str(v)) for k, v in (result.get("headers") or {}).items())
        status = int(result.get("status") or (200 if allow else 403))
        response = result.get("response") or {}
        if not isinstance(response, dict):
            raise TypeError("response is not an object")
        return PolicyDecision(
            allow=allow,
            status=200 if allow else status,
            reason=str(result.get("reason") or ("ok" if allow else "denied")),
            quota=quota,
            headers=headers,
            decision_id=str(body.get("decision_id") or ""),
            response=tuple(sorted(response.items())),
            plan=parse_hints(response) if allow else NO_PLAN,
            version=parse_version(result.get("version")) if allow else "",
            **context,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, str(exc)) from exc


class OpaClient:
    """POST /v1/data/<path> with {"input": ...}; errors and timeouts become Denied(503)."""

    def __init__(self, base_url: str, decision_path: str, timeout: float) -> None:
        self._base = base_url.rstrip("/")
        self._url = f"{self._base}/v1/data/{decision_path.strip('/')}"
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

    async def decide(self, policy_input: dict[str, Any], path: str = "") -> PolicyDecision:
        """One POST; `path` overrides the configured rule (shadow mode queries a candidate)."""
        url = f"{self._base}/v1/data/{path.strip('/')}" if path else self._url
        started = time.perf_counter()
        try:
            body = await self._request("POST", url, {"input": policy_input})
        except Denied as denied:
            OPA_ERRORS.labels(denied.reason.value).inc()
            raise
        finally:
            OPA_SECONDS.observe(time.perf_counter() - started)
        return parse_decision(body)

    async def get(self, path: str) -> bytes:
        """GET a raw OPA API document (e.g. /v1/policies), for the revision watcher."""
        assert self._session is not None, "OpaClient.start() was not awaited"
        try:
            async with self._session.get(f"{self._base}{path}") as resp:
                if resp.status != 200:
                    raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, f"http {resp.status}")
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Denied(Status.UNAVAILABLE, Reason.OPA_UNAVAILABLE, type(exc).__name__) from exc

    async def _request(self, method: str, url: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._session is not None, "OpaClient.start() was not awaited"
        try:
            async with self._session.request(method, url, json=payload) as resp:
                if resp.status != 200:
                    raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, f"http {resp.status}")
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
            raise Denied(Status.UNAVAILABLE, Reason.OPA_UNAVAILABLE, type(exc).__name__) from exc
        if not isinstance(body, dict):
            raise Denied(Status.UNAVAILABLE, Reason.OPA_BAD_RESPONSE, "not an object")
        return body
