"""Stage 3a: the OPA input document, built from typed values only.

The shape is documented in rego/README.md and rego/input.schema.json; Rego is the only place
that decides access. The input holds nothing volatile (no request id, no timestamp), so equal
inputs mean equal decisions under one policy revision: that is what the decision cache keys on.
"""

from __future__ import annotations

import json
from typing import Any

from extauthz.types import Principal, RequestView

SCHEMA_VERSION = 1
_NO_BODY: dict[str, Any] = {
    "valid": True,
    "batch_size": 0,
    "inputs": 0,
    "outputs": [],
    "parameters": [],
}
_BAD_BODY: dict[str, Any] = {**_NO_BODY, "valid": False}


def body_facts(view: RequestView) -> dict[str, Any]:
    """What a V2 inference body asks for: batch size, requested outputs, parameter names.

    Only `infer` requests carry a body the policy reads; anything that is not a well-formed
    V2 request body gives `valid: false` (and the policy decides what that means)."""
    if view.route.action != "infer":
        return _NO_BODY
    try:
        doc = json.loads(view.body)
        inputs = doc["inputs"]
        if not isinstance(doc, dict) or not isinstance(inputs, list) or not inputs:
            return _BAD_BODY
        batch = 0
        for tensor in inputs:
            shape = tensor["shape"]
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                return _BAD_BODY
            batch = max(batch, shape[0] if shape else 1)
        outputs = doc.get("outputs") or []
        names = sorted({str(o["name"]) for o in outputs})
        parameters = doc.get("parameters") or {}
        if not isinstance(parameters, dict):
            return _BAD_BODY
    except (ValueError, TypeError, KeyError, IndexError):  # JSONDecodeError is a ValueError
        return _BAD_BODY
    return {
        "valid": True,
        "batch_size": batch,
        "inputs": len(inputs),
        "outputs": names,
        "parameters": sorted(parameters),
    }


def build_input(view: RequestView, principal: Principal) -> dict[str, Any]:
    route = view.route
    return {
        "schema_version": SCHEMA_VERSION,
        "request": {
            "method": view.method,
            "path": view.path,
            "model": route.name,
            "version": route.version,
            "action": route.action,
            "source_ip": view.source_ip,
            "body": body_facts(view),
        },
        "principal": {
            "subject": principal.subject,
            "roles": list(principal.roles),
            "projects": list(principal.projects),
            "tier": principal.tier,
            "credential": principal.credential,  # api_key | jwt | jwt+dpop | mtls
        },
        # the DPoP key that proved possession: trust none | registered | managed | attested
        "device": {"trust": principal.device.trust, "thumbprint": principal.device.thumbprint},
    }
