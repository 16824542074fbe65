"""The ext_proc processor (envoy.service.ext_proc.v3.ExternalProcessor): enforces the plan the
decision put in dynamic metadata on the model server's answer. Envoy sends it only responses
whose plan shapes (the `shaped` route), headers then the whole buffered body; it never
re-evaluates policy.

- 2xx: the V2 body rewritten by the plan (shaping.body), content-length and content-type set.
- 4xx/5xx: the gateway's generic JSON error (shaping.body.generic_error); the original status
  and the start of its body go to the decision log under the request id.
- Anything else — no or a malformed plan, a compressed or non-JSON answer, a body that does
  not parse as V2: 503 `{"error":"unavailable"}`, never a half or unshaped body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyMutation,
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    ImmediateResponse,
    ProcessingRequest,
    ProcessingResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import ListValue, Struct

from extauthz.decisionlog import DecisionLog
from extauthz.metrics import SHAPING, SHAPING_SECONDS
from extauthz.shaping.body import UNAVAILABLE, ShapeError, generic_error, shape_response
from extauthz.shaping.plan import NAMESPACE, SHAPE_KEY, from_metadata
from extauthz.types import ResponsePlan

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"
MAX_BODY = 1048576  # EXTAUTHZ_SHAPE_MAX_BODY_BYTES' default
LOGGED_BODY = 1024  # bytes of a model-server error body kept in the decision log
_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


def _plain(value: Any) -> Any:
    """A Struct / ListValue / scalar → plain Python."""
    if isinstance(value, Struct):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, ListValue):
        return [_plain(v) for v in value]
    return value


def _set(name: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(
        header=HeaderValue(key=name, raw_value=value.encode()), append_action=_OVERWRITE
    )


def _headers(request: ProcessingRequest) -> dict[str, str]:
    out = {}
    for h in request.response_headers.headers.headers:
        out[h.key.lower()] = h.raw_value.decode("latin-1") if h.raw_value else h.value
    return out


def immediate(status: int, body: bytes, details: str) -> ProcessingResponse:
    """A generic JSON answer in place of the model server's."""
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=status),
            headers=HeaderMutation(
                set_headers=[
                    _set("content-type", "application/json"),
                    _set("cache-control", "no-store"),
                ]
            ),
            body=body,
            details=details,
        )
    )


def _failed(reason: str) -> ProcessingResponse:
    SHAPING.labels("failed").inc()
    return immediate(*UNAVAILABLE, f"shaping_failed_{reason}")


class Exchange:
    """One response's way through the processor: its plan, status and headers."""

    def __init__(self, decision_log: DecisionLog | None, max_body: int = MAX_BODY) -> None:
        self._log = decision_log
        self._max_body = max_body
        self.plan: ResponsePlan | None = None
        self.request_id = ""
        self.decision_id = ""
        self.status = 0
        self.headers: dict[str, str] = {}

    def on_headers(self, request: ProcessingRequest) -> ProcessingResponse:
        ns = request.metadata_context.filter_metadata.get(NAMESPACE)
        try:
            if ns is None or SHAPE_KEY not in ns.fields:
                raise ValueError("no plan in the dynamic metadata")
            self.plan, self.request_id, self.decision_id = from_metadata(_plain(ns[SHAPE_KEY]))
            self.headers = _headers(request)
            self.status = int(self.headers.get(":status", "0"))
        except ValueError as exc:
            log.warning("shaping: %s", exc)
            return _failed("plan")
        if request.response_headers.end_of_stream:  # no body follows
            return self.finish(b"")
        return ProcessingResponse(response_headers=HeadersResponse())

    def finish(self, body: bytes) -> ProcessingResponse:
        """The whole answer is here: shape it, or replace it."""
        if self.status >= 400 or self.status < 200:
            return self._upstream_error(body)
        if len(body) > self._max_body:  # Envoy buffered past its limit: refuse it whole
            return _failed("too_large")
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            return _failed("encoding")
        if not self.headers.get("content-type", "").lower().startswith("application/json"):
            return _failed("content_type")
        assert self.plan is not None
        try:
            shaped = shape_response(body, self.plan)
        except ShapeError as exc:
            log.warning("shaping %s: %s", self.request_id, exc)
            return _failed("body")
        SHAPING.labels("shaped").inc()
        return ProcessingResponse(
            response_body=BodyResponse(
                response=CommonResponse(
                    header_mutation=HeaderMutation(
                        set_headers=[
                            _set("content-length", str(len(shaped))),
                            _set("content-type", "application/json"),
                        ],
                        remove_headers=["etag", "content-md5", "digest"],
                    ),
                    body_mutation=BodyMutation(body=shaped),
                )
            )
        )

    def _upstream_error(self, body: bytes) -> ProcessingResponse:
        SHAPING.labels("upstream_error").inc()
        if self._log is not None:
            self._log.record_event(
                {
                    "ts": round(time.time(), 6),
                    "event": "upstream_error",
                    "request_id": self.request_id,
                    "decision_id": self.decision_id,
                    "upstream_status": self.status,
                    "upstream_content_type": self.headers.get("content-type", ""),
                    "upstream_body": body[:LOGGED_BODY].decode("utf-8", "replace"),
                }
            )
        status, generic = generic_error(self.status)
        return immediate(status, generic, "upstream_error_normalised")


class ShapingProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):
    def __init__(self, decision_log: DecisionLog | None = None, max_body: int = MAX_BODY) -> None:
        self._log = decision_log
        self._max_body = max_body

    async def Process(  # noqa: N802 - the gRPC method name
        self, request_iterator: AsyncIterator[ProcessingRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[ProcessingResponse]:
        exchange = Exchange(self._log, self._max_body)
        async for request in request_iterator:
            started = time.perf_counter()
            kind = request.WhichOneof("request")
            if kind == "response_headers":
                response = exchange.on_headers(request)
            elif kind == "response_body" and exchange.plan is not None:
                if not request.response_body.end_of_stream:
                    response = _failed("partial_body")  # BUFFERED mode sends one whole body
                else:
                    response = exchange.finish(request.response_body.body)
            else:  # a message this configuration never asks for
                response = _failed(f"unexpected_{kind}")
            SHAPING_SECONDS.observe(time.perf_counter() - started)
            yield response
            if response.HasField("immediate_response"):
                return
