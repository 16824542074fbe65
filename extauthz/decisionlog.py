"""One structured JSON line per decision, written off the request path (queue + thread).

Never carries a credential: only key ids, subjects and reason codes.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import queue
import sys
import time
from typing import Any

from extauthz.types import Decision, RequestView

LOGGER_NAME = "extauthz.decision"


class DecisionLog:
    def __init__(self, target: str = "-") -> None:
        self._logger = logging.getLogger(LOGGER_NAME)
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        handler: logging.Handler = (
            logging.StreamHandler(sys.stderr) if target == "-" else logging.FileHandler(target)
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._logger.handlers = [logging.handlers.QueueHandler(self._queue)]

    def start(self) -> None:
        self._listener.start()

    def stop(self) -> None:
        self._listener.stop()
        for handler in self._listener.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()

    def record(self, view: RequestView, decision: Decision, duration_ns: int) -> None:
        self._logger.info(
            json.dumps(decision_record(view, decision, duration_ns), separators=(",", ":"))
        )


def decision_record(view: RequestView, decision: Decision, duration_ns: int) -> dict[str, Any]:
    principal, policy = decision.principal, decision.policy
    return {
        "ts": round(time.time(), 6),
        "decision_id": decision.decision_id,
        "request_id": view.request_id,
        "status": int(decision.status),
        "reason": decision.reason.value,
        "policy_reason": policy.reason if policy else None,
        "opa_decision_id": (policy.decision_id or None) if policy else None,
        "policy_source": policy.source if policy else None,
        "policy_revision": (policy.revision or None) if policy else None,
        "subject": principal.subject if principal else None,
        "credential": principal.credential if principal else None,
        "credential_id": principal.credential_id if principal else None,
        "device_trust": principal.device.trust
        if principal and principal.device.thumbprint
        else None,
        "device": (principal.device.thumbprint or None) if principal else None,
        "method": view.method,
        "path": view.path,
        "model": view.route.name or None,
        "action": view.route.action or None,
        "source_ip": view.source_ip,
        "retry_after": decision.limits.retry_after
        if decision.limits and not decision.limits.allowed
        else None,
        "detail": decision.extra.get("detail") or None,
        "duration_us": duration_ns // 1000,
        "worker": os.getpid(),  # with `serve --workers N`, which process decided
    }
