"""`make demo`: start the stack, create demo keys, show allowed and denied requests via Envoy."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

from extauthz.authn.apikeys import KeyStore
from extauthz.devstack import ORDER, Stack, StackError
from extauthz.wiring import key_pepper, redis_client

DIGIT_ZERO = [
    0,
    0,
    5,
    13,
    9,
    1,
    0,
    0,
    0,
    0,
    13,
    15,
    10,
    15,
    5,
    0,
    0,
    3,
    15,
    2,
    0,
    11,
    8,
    0,
    0,
    4,
    12,
    0,
    0,
    8,
    8,
    0,
    0,
    5,
    8,
    0,
    0,
    9,
    8,
    0,
    0,
    4,
    11,
    0,
    1,
    12,
    7,
    0,
    0,
    2,
    14,
    5,
    10,
    12,
    0,
    0,
    0,
    0,
    6,
    13,
    10,
    0,
    0,
    0,
]  # load_digits()[0], a "0"
CANCER_ROW = [
    17.99,
    10.38,
    122.8,
    1001.0,
    0.1184,
    0.2776,
    0.3001,
    0.1471,
    0.2419,
    0.07871,
    1.095,
    0.9053,
    8.589,
    153.4,
    0.006399,
    0.04904,
    0.05373,
    0.01587,
    0.03003,
    0.006193,
    25.38,
    17.33,
    184.6,
    2019.0,
    0.1622,
    0.6656,
    0.7119,
    0.2654,
    0.4601,
    0.1189,
]  # load_breast_cancer()[0]


def infer_body(features: list[float]) -> bytes:
    tensor = {"name": "input-0", "shape": [1, len(features)], "datatype": "FP64", "data": features}
    return json.dumps({"inputs": [tensor]}).encode()


def send(
    url: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url, data=body, headers=headers, method="POST" if body else "GET"
    )
    if body:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


async def _create_keys(stack: Stack) -> dict[str, str]:
    settings = stack.settings.model_copy(update={"key_pepper_file": stack.key_pepper_file})
    redis = redis_client(settings)
    store = KeyStore(redis, key_pepper(settings))
    try:
        people = {
            "alice": (("analyst",), ("vision",), "standard"),
            "bob": (("clinician",), ("clinical",), "standard"),
            "trial-user": (("analyst",), ("vision",), "trial"),
        }
        keys = {}
        for subject, (roles, projects, tier) in people.items():
            _, keys[subject] = await store.create(subject, roles, projects, tier, expires_in=86400)
        return keys
    finally:
        await redis.aclose()


def run_demo(stack: Stack) -> int:
    status = stack.status()
    if not all(status.values()):
        stack.down([n for n in ORDER if status[n]])
        try:
            stack.up()
        except StackError as exc:
            print(f"stack failed: {exc}")
            return 1
    keys = asyncio.run(_create_keys(stack))
    base = stack.envoy_url
    digits, cancer = f"{base}/v2/models/digits/infer", f"{base}/v2/models/cancer/infer"
    auth = {name: {"authorization": f"Bearer {key}"} for name, key in keys.items()}
    cases = [
        ("no credentials → digits", digits, infer_body(DIGIT_ZERO), {}),
        (
            "a made-up key → digits",
            digits,
            infer_body(DIGIT_ZERO),
            {"x-api-key": "eak_0123456789ab.nope-nope-nope-nope-nope"},
        ),
        ("alice (analyst, vision) → digits", digits, infer_body(DIGIT_ZERO), auth["alice"]),
        ("alice → cancer (clinical)", cancer, infer_body(CANCER_ROW), auth["alice"]),
        ("bob (clinician, clinical) → cancer", cancer, infer_body(CANCER_ROW), auth["bob"]),
    ] + [
        (
            f"trial key, request {i} of 6 in a minute",
            digits,
            infer_body(DIGIT_ZERO),
            auth["trial-user"],
        )
        for i in range(1, 7)
    ]
    print(f"\nThrough Envoy at {base}:\n")
    rows = []
    for label, url, body, headers in cases:
        code, resp_headers, payload = send(url, body, headers)
        lower = {k.lower(): v for k, v in resp_headers.items()}
        extra = f"  RateLimit: {lower['ratelimit']}" if "ratelimit" in lower else ""
        extra += f"  Retry-After: {lower['retry-after']}" if "retry-after" in lower else ""
        print(f"  {label:<40} {code}  {_summary(code, payload)}{extra}")
        rows.append((label, lower.get("x-request-id", "")))
    time.sleep(0.2)  # the decision log is written off the request path
    reasons = _logged_reasons(stack.logs / "decisions.log")
    print("\nWhy, from the decision log (never sent to the client), by x-request-id:\n")
    for label, request_id in rows:
        print(f"  {label:<40} {reasons.get(request_id, '?')}")
    print(f"\nDecision log: {stack.logs / 'decisions.log'}")
    print("The stack keeps running: `make down` stops it.")
    return 0


def _logged_reasons(path: Path) -> dict[str, str]:
    reasons = {}
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            policy = rec.get("policy_reason")
            detail = f" ({policy})" if policy and policy != "ok" else ""
            reasons[rec["request_id"]] = f"{rec['reason']}{detail}"
    return reasons


def _summary(code: int, payload: bytes) -> str:
    if code != 200:
        return payload.decode(errors="replace")
    try:
        outputs = json.loads(payload)["outputs"]
        return f"prediction {outputs[0]['data']}"
    except (ValueError, KeyError, IndexError):
        return payload[:80].decode(errors="replace")
