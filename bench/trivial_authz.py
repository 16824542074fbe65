"""Path B's guard: a grpc.aio ext_authz v3 server that allows everything, built like extauthz's
server (same grpcio, same server options, health service) but with no decision logic — the
floor any Python ext_authz pays for Envoy's gRPC round trip.

    python -m bench.trivial_authz --port 9192 [--delay-us N] [--event-loop auto|uvloop|asyncio]

It runs on the event loop extauthz runs on (EXTAUTHZ_EVENT_LOOP, default: uvloop when
installed), so B against C compares decision work, not event loops.

--delay-us burns N µs of CPU per Check (the gate's self-test only; never in a measured run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse, OkHttpResponse
from google.rpc import status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz.server import run_on_loop

_ALLOW = CheckResponse(status=status_pb2.Status(code=0), ok_response=OkHttpResponse())


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, delay_us: int = 0) -> None:
        self._delay_ns = delay_us * 1000

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: CheckRequest, context: grpc.aio.ServicerContext
    ) -> CheckResponse:
        if self._delay_ns:
            until = time.perf_counter_ns() + self._delay_ns
            while time.perf_counter_ns() < until:
                pass
        return _ALLOW


async def serve(port: int, delay_us: int) -> None:
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(AllowAll(delay_us), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-us", type=int, default=0)
    parser.add_argument(
        "--event-loop",
        choices=("auto", "uvloop", "asyncio"),
        default=os.environ.get("EXTAUTHZ_EVENT_LOOP", "auto"),
    )
    args = parser.parse_args()
    run_on_loop(serve(args.port, args.delay_us), args.event_loop)


if __name__ == "__main__":
    main()
