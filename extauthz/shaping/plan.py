"""The response plan: the policy's `response` hints, validated, merged with the subject's
degradation level, and carried to the ext_proc processor in Envoy dynamic metadata. Pure."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from extauthz.types import NO_PLAN, ResponsePlan

# Dynamic metadata is written by the ext_authz filter under its own name; Envoy forwards this
# namespace to ext_proc (metadata_options) and routes on the presence of `shape` in it.
NAMESPACE = "envoy.filters.http.ext_authz"
SHAPE_KEY = "shape"

HINTS = ("round", "max_classes", "labels_only", "drop_outputs", "cache")
CACHE_MODES = ("no-store", "tenant")
MAX_ROUND = 6
MAX_CLASSES = 1000
MAX_DROP = 8
DEGRADE_LEVELS = (0, 1, 2, 3)  # none, round 2, top-1 + round 2, labels only
DEGRADE_ROUND = 2
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}")


def _int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ValueError(f"response.{name} is not an integer")
    if not low <= int(value) <= high:
        raise ValueError(f"response.{name} is outside {low}..{high}")
    return int(value)


def parse_hints(hints: dict[str, Any]) -> ResponsePlan:
    """The policy's `response` object → ResponsePlan; anything outside the vocabulary raises
    ValueError (the service then fails closed, `extauthz policy test` reports it)."""
    unknown = sorted(set(hints) - set(HINTS))
    if unknown:
        raise ValueError(f"response has unknown hints: {', '.join(unknown)}")
    plan = NO_PLAN
    if hints.get("round") is not None:
        plan = replace(plan, round=_int(hints["round"], "round", 0, MAX_ROUND))
    if hints.get("max_classes") is not None:
        plan = replace(plan, max_classes=_int(hints["max_classes"], "max_classes", 1, MAX_CLASSES))
    labels = hints.get("labels_only", False)
    if not isinstance(labels, bool):
        raise ValueError("response.labels_only is not a boolean")
    drop = hints.get("drop_outputs") or []
    if not isinstance(drop, list) or len(drop) > MAX_DROP:
        raise ValueError(f"response.drop_outputs is not a list of at most {MAX_DROP} names")
    for name in drop:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError("response.drop_outputs holds an invalid output name")
    cache = hints.get("cache", "no-store")
    if cache not in CACHE_MODES:
        raise ValueError(f"response.cache is not one of {', '.join(CACHE_MODES)}")
    return replace(plan, labels_only=labels, drop_outputs=tuple(sorted(set(drop))), cache=cache)


def merge_degrade(plan: ResponsePlan, degrade: int) -> ResponsePlan:
    """The policy's plan and the subject's degradation level: the stricter of each wins.
    1: scores rounded to 2 decimals (or the policy's coarser rounding); 2: also top-1 class;
    3: labels only. An unknown level above 3 counts as 3."""
    if degrade <= 0:
        return plan
    rounding = DEGRADE_ROUND if plan.round is None else min(plan.round, DEGRADE_ROUND)
    plan = replace(plan, round=rounding)
    if degrade >= 2:
        plan = replace(plan, max_classes=1)
    if degrade >= 3:
        plan = replace(plan, labels_only=True)
    return plan


def to_metadata(plan: ResponsePlan, request_id: str, decision_id: str) -> dict[str, Any]:
    """The plan as the ext_authz CheckResponse's dynamic metadata (a Struct)."""
    shape: dict[str, Any] = {
        "labels_only": plan.labels_only,
        "request_id": request_id,
        "decision_id": decision_id,
    }
    if plan.round is not None:
        shape["round"] = plan.round
    if plan.max_classes is not None:
        shape["max_classes"] = plan.max_classes
    if plan.drop_outputs:
        shape["drop_outputs"] = list(plan.drop_outputs)
    return {SHAPE_KEY: shape}


def from_metadata(shape: dict[str, Any]) -> tuple[ResponsePlan, str, str]:
    """What to_metadata wrote (Struct numbers arrive as floats): (plan, request id, decision
    id). Raises ValueError on anything else."""
    if not isinstance(shape, dict):
        raise ValueError("shape is not an object")
    hints = {
        k: shape[k] for k in ("round", "max_classes", "labels_only", "drop_outputs") if k in shape
    }
    plan = parse_hints(hints)
    if not plan.shapes:
        raise ValueError("an empty plan was routed to the processor")
    return plan, str(shape.get("request_id", "")), str(shape.get("decision_id", ""))


def cache_headers(cache: str, credential_headers: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Cache-Control and Vary of an allowed answer: `no-store` for non-public models; `tenant`
    (public models) may be kept by the caller's own cache only (`private`). Both vary on the
    credential headers, so no cache keyed without them may serve one caller's answer to
    another."""
    vary = ("vary", ", ".join(credential_headers))
    if cache == "tenant":
        return (("cache-control", "private"), vary)
    return (("cache-control", "no-store"), vary)
