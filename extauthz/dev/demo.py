"""`make demo`: start the stack, create demo credentials, show allowed and denied requests
through Envoy, then the reasons the decision log recorded for them."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from extauthz.authn.apikeys import KeyStore
from extauthz.authn.devices import DeviceStore
from extauthz.dev.devstack import Stack
from extauthz.dev.issuer import make_proof, new_device_key
from extauthz.dev.runner import StackError
from extauthz.wiring import key_pepper, redis_client

# fmt: off
DIGIT_ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0,
              0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0,
              0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]  # load_digits()[0], a "0"
CANCER_ROW = [17.99, 10.38, 122.8, 1001.0, 0.1184, 0.2776, 0.3001, 0.1471, 0.2419, 0.07871,
              1.095, 0.9053, 8.589, 153.4, 0.006399, 0.04904, 0.05373, 0.01587, 0.03003,
              0.006193, 25.38, 17.33, 184.6, 2019.0, 0.1622, 0.6656, 0.7119, 0.2654, 0.4601,
              0.1189]  # load_breast_cancer()[0]
DIABETES_ROW = [0.0381, 0.0507, 0.0617, 0.0219, -0.0442, -0.0348, -0.0434, -0.0026, 0.0199,
                -0.0176]  # load_diabetes()[0]
# fmt: on


def infer_body(features: list[float], batch: int = 1) -> bytes:
    tensor = {
        "name": "input-0",
        "shape": [batch, len(features)],
        "datatype": "FP64",
        "data": features * batch,
    }
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


@dataclass(frozen=True)
class Case:
    label: str
    url: str
    body: bytes
    headers: dict[str, str]


async def _enroll(stack: Stack) -> tuple[dict[str, str], dict[str, str]]:
    """API keys for alice, bob and a trial user; tokens for alice and bob; bob's device key
    enrolled as `managed`. Returns (authorization headers by name, DPoP context)."""
    settings = stack.settings.model_copy(update={"key_pepper_file": stack.key_pepper_file})
    redis = redis_client(settings)
    store = KeyStore(redis, key_pepper(settings))
    try:
        people = {
            "alice": (("analyst",), ("vision",), "standard"),
            "bob": (("clinician",), ("clinical",), "standard"),
            "trial-user": (("analyst",), ("vision",), "trial"),
        }
        auth = {}
        for subject, (roles, projects, tier) in people.items():
            _, key = await store.create(subject, roles, projects, tier, expires_in=86400)
            auth[f"{subject} key"] = f"Bearer {key}"
        issuer = stack.dev_issuer
        auth["alice jwt"] = "Bearer " + issuer.mint("alice", ("analyst",), ("vision",))
        auth["bob jwt"] = "Bearer " + issuer.mint("bob", ("clinician",), ("clinical",))
        device = new_device_key()
        await DeviceStore(redis).enroll("bob", device.as_dict(private=False), "managed")
        bound = issuer.mint("bob", ("clinician",), ("clinical",), dpop_jkt=device.thumbprint())
        return auth, {"token": bound, "key": device}  # type: ignore[dict-item]
    finally:
        await redis.aclose()


def run_demo(stack: Stack) -> int:
    try:
        stack.up()  # starts what is not running, leaves the rest alone
    except StackError as exc:
        print(f"stack failed: {exc}")
        return 1
    auth, dpop = asyncio.run(_enroll(stack))
    base = stack.envoy_url
    digits, cancer = f"{base}/v2/models/digits/infer", f"{base}/v2/models/cancer/infer"
    diabetes = f"{base}/v2/models/diabetes/infer"
    zero, row, dia = infer_body(DIGIT_ZERO), infer_body(CANCER_ROW), infer_body(DIABETES_ROW)
    scores = json.dumps({**json.loads(row), "outputs": [{"name": "predict_proba"}]}).encode()

    def a(name: str) -> dict[str, str]:
        return {"authorization": auth[name]}

    proof = make_proof(dpop["key"], "POST", diabetes, dpop["token"])  # type: ignore[arg-type]
    with_proof = {"authorization": f"DPoP {dpop['token']}", "dpop": proof}
    cases = [
        Case("no credentials → digits", digits, zero, {}),
        Case(
            "a made-up key → digits",
            digits,
            zero,
            {"x-api-key": "eak_0123456789ab.nope-nope-nope-nope"},
        ),
        Case("alice key (analyst, vision) → digits", digits, zero, a("alice key")),
        Case("alice key → cancer (clinical)", cancer, row, a("alice key")),
        Case(
            "alice key → digits, batch of 100", digits, infer_body(DIGIT_ZERO, 100), a("alice key")
        ),
        Case("alice JWT → digits", digits, zero, a("alice jwt")),
        Case("bob key (clinician) → cancer", cancer, row, a("bob key")),
        Case("bob key → cancer scores (shaped: top-1, 2 dp)", cancer, scores, a("bob key")),
        Case("bob key → diabetes (restricted)", diabetes, dia, a("bob key")),
        Case("bob JWT, no device proof → diabetes", diabetes, dia, a("bob jwt")),
        Case("bob JWT + DPoP, managed device → diabetes", diabetes, dia, with_proof),
        Case("the same DPoP proof again (replay)", diabetes, dia, with_proof),
    ] + [
        Case(f"trial key, request {i} of 6 in a minute", digits, zero, a("trial-user key"))
        for i in range(1, 7)
    ]
    print(f"\nThrough Envoy at {base}:\n")
    rows = []
    for case in cases:
        code, resp_headers, payload = send(case.url, case.body, case.headers)
        lower = {k.lower(): v for k, v in resp_headers.items()}
        extra = f"  RateLimit: {lower['ratelimit']}" if "ratelimit" in lower else ""
        extra += f"  Retry-After: {lower['retry-after']}" if "retry-after" in lower else ""
        print(f"  {case.label:<44} {code}  {_summary(code, payload)}{extra}")
        rows.append((case.label, lower.get("x-request-id", "")))
    time.sleep(0.3)  # the decision log is written off the request path
    reasons = _logged_reasons(stack.logs / "decisions.log")
    print("\nWhy, from the decision log (never sent to the client), by x-request-id:\n")
    for label, request_id in rows:
        print(f"  {label:<44} {reasons.get(request_id, '?')}")
    print(f"\nDecision log: {stack.logs / 'decisions.log'}")
    print("The stack keeps running: `make down` stops it.")
    return 0


def _logged_reasons(path: Path) -> dict[str, str]:
    reasons = {}
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if "event" in rec:  # e.g. a model-server error kept by the shaping processor
                continue
            policy = rec.get("policy_reason")
            detail = f" ({policy})" if policy and policy != "ok" else ""
            served = f", model version {rec['version']}" if rec.get("version") else ""
            reasons[rec["request_id"]] = f"{rec['reason']}{detail}{served}"
    return reasons


def _summary(code: int, payload: bytes) -> str:
    if code != 200:
        return payload.decode(errors="replace")
    try:
        outputs = json.loads(payload)["outputs"]
        data = outputs[0]["data"]
        return f"prediction {[round(x, 1) if isinstance(x, float) else x for x in data]}"
    except (ValueError, KeyError, IndexError, TypeError):
        return payload[:80].decode(errors="replace")
