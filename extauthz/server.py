"""The grpc.aio server: ext_authz v3, gRPC health, graceful shutdown. No decision logic."""

from __future__ import annotations

import asyncio
import logging
import signal

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz.handler import CheckHandler
from extauthz.metrics import serve_metrics
from extauthz.settings import Settings
from extauthz.wiring import build_service

log = logging.getLogger(__name__)

SERVICE_NAME = "envoy.service.auth.v3.Authorization"


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, handler: CheckHandler) -> None:
        self._handler = handler

    async def Check(  # noqa: N802 - the gRPC method name
        self, request: CheckRequest, context: grpc.aio.ServicerContext
    ) -> CheckResponse:
        return await self._handler.check(request)


async def serve(settings: Settings) -> None:
    service = build_service(settings)
    await service.start()
    serve_metrics(settings.metrics_port, settings.host)
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(service.handler), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.port}"
    server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("extauthz listening on %s", address)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5)
    await service.close()
