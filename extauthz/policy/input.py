"""Stage 3a: the OPA input document, built from typed values only.

The shape is documented in rego/README.md and rego/input.schema.json; Rego is the only place
that decides access. The input holds nothing volatile (no request id, no timestamp), so equal
inputs mean equal decisions under one policy revision: that is what the decision cache keys on.
"""

from __future__ import annotations

from typing import Any

from extauthz.types import Principal, RequestView
from extauthz.v2body import BodyError, V2Body, read_body

SCHEMA_VERSION = 1
_NO_BODY = V2Body(valid=True, reason=BodyError.OK)  # metadata and ready carry no body


def body_facts(view: RequestView) -> dict[str, Any]:
    """What a V2 inference body asks for, as the model server will run it (extauthz/v2body.py).

    Only `infer` requests carry a body the policy reads; a body the gateway cannot read
    unambiguously gives `valid: false` with its `reason` (and the policy decides what that
    means). Names only, never values: the input stays small and cacheable."""
    facts = read_body(view.body) if view.route.action == "infer" else _NO_BODY
    return {
        "valid": facts.valid,
        "reason": str(facts.reason),
        "content_type": facts.content_type,
        "batch_size": facts.rows,
        "features": facts.features,
        "inputs": len(facts.inputs),
        "datatypes": list(facts.datatypes),
        "outputs": list(facts.outputs),
        "parameters": list(facts.parameters),
        "output_parameters": list(facts.output_parameters),
    }


def build_input(view: RequestView, principal: Principal, bucket: int = 0) -> dict[str, Any]:
    """`bucket`: the caller's sticky bucket on this model (policy/rollout.py), 0-99."""
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
            "bucket": bucket,  # picks a model version (rego/extauthz/versions.rego)
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
