"""Diagnostic MLServer runtime: echoes the request headers the model server received.

MLServer copies the transport headers (HTTP headers, or gRPC metadata) into
``InferenceRequest.parameters.headers`` before calling ``predict`` (see
``mlserver.utils.insert_headers``). This runtime returns them, JSON-encoded, as a
single BYTES output named ``headers``, so tests can prove which headers (e.g. no
credentials) reach the model server behind the gateway.

The inputs are ignored; any valid V2 request works, e.g.
``{"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["ping"]}]}``.

train.py copies this file into the ``echo`` model folder; MLServer puts that folder
on ``sys.path`` while importing ``implementation: "echo_runtime.EchoRuntime"``.
"""

from __future__ import annotations

import json

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

# MLServer's CloudEvents middleware adds these (capitalised, e.g. "Ce-Id") to the
# request headers before predict(); they are MLServer's own, not received, so drop
# them. HTTP/gRPC header names arrive lower-cased, so a client's own "ce-id" survives.
MLSERVER_CE_HEADERS = frozenset(
    {
        "Ce-Id",
        "Ce-Specversion",
        "Ce-Source",
        "Ce-Type",
        "Ce-Requestid",
        "Ce-Modelid",
        "Ce-Inferenceservicename",
        "Ce-Namespace",
        "Ce-Endpoint",
    }
)


class EchoRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        headers = {}
        if payload.parameters is not None and payload.parameters.headers:
            headers = {
                str(k).lower(): str(v)
                for k, v in payload.parameters.headers.items()
                if k not in MLSERVER_CE_HEADERS
            }
        body = json.dumps(headers, sort_keys=True, separators=(",", ":"))
        # NB: never set response `parameters.headers`: MLServer would turn them into
        # HTTP response headers.
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[StringCodec.encode_output("headers", [body])],
        )
