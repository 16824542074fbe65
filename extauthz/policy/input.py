"""Stage 3a: the OPA input document, built from typed values only.

The shape is documented in rego/README.md; Rego is the only place that decides access.
"""

from __future__ import annotations

from typing import Any

from extauthz.types import Principal, RequestView


def build_input(view: RequestView, principal: Principal) -> dict[str, Any]:
    route = view.route
    return {
        "request": {
            "method": view.method,
            "path": view.path,
            "model": route.name,
            "version": route.version,
            "action": route.action,
            "source_ip": view.source_ip,
        },
        "principal": {
            "subject": principal.subject,
            "roles": list(principal.roles),
            "projects": list(principal.projects),
            "tier": principal.tier,
            "credential": principal.credential,
        },
    }
