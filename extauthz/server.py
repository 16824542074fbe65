"""The grpc.aio server: ext_authz v3, gRPC health, graceful shutdown. No decision logic."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extauthz.decisionlog import DecisionLog
from extauthz.handler import CheckHandler
from extauthz.metrics import serve_metrics
from extauthz.settings import Settings
from extauthz.shaping.processor import SERVICE_NAME as SHAPING_SERVICE
from extauthz.shaping.processor import ShapingProcessor
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


async def serve(settings: Settings, worker: bool = False, index: int = 0) -> None:
    """One service process. A `worker` shares the port with its siblings (SO_REUSEPORT) and
    leaves /metrics to the supervisor, which aggregates every worker's metrics; `index` names
    its audit chain."""
    service = build_service(settings, worker_index=index)
    await service.start()
    if not worker:
        serve_metrics(settings.metrics_port, settings.host)
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if worker else 0),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
        ]
    )
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
        AuthorizationServicer(service.handler), server
    )
    services = [SERVICE_NAME]
    if not settings.shape_port:  # the response-shaping processor shares this server
        external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
            ShapingProcessor(service.decision_log, settings.shape_max_body_bytes), server
        )
        services.append(SHAPING_SERVICE)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.port}"
    server.add_insecure_port(address)
    await server.start()
    for name in ("", *services):
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


async def serve_shaping(settings: Settings) -> None:
    """The ext_proc processor alone, on EXTAUTHZ_SHAPE_PORT (`serve --shaping-only`): a
    process beside the service, so shaping work never shares the decisions' event loop."""
    decision_log = DecisionLog(settings.decision_log)
    decision_log.start()
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)])
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(
        ShapingProcessor(decision_log, settings.shape_max_body_bytes), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{settings.host}:{settings.shape_port}"
    server.add_insecure_port(address)
    await server.start()
    for name in ("", SHAPING_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("extauthz shaping processor listening on %s", address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=5)
    decision_log.stop()


def run(settings: Settings, worker: bool = False, index: int = 0) -> None:
    """Run one service process to completion on the configured event loop."""
    run_on_loop(serve(settings, worker, index), settings.event_loop)


def run_on_loop(main: Coroutine[Any, Any, None], event_loop: str) -> None:
    """asyncio.run on uvloop (`uvloop`, or `auto` when installed) or the standard loop."""
    if event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if event_loop == "uvloop":
                raise
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def supervise(settings: Settings, workers: int) -> int:
    """`serve --workers N`: N service processes sharing the port (SO_REUSEPORT; the kernel
    spreads connections across them), limits shared through Redis, metrics aggregated here
    (prometheus_client multiprocess mode). A worker that dies takes the others down: the
    process manager above restarts the whole service."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    metrics_dir = tempfile.mkdtemp(prefix="extauthz-metrics-")
    # each worker knows it has siblings (e.g. a DPoP jti seen by one is unknown to the others)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir, "EXTAUTHZ_WORKERS": str(workers)}
    argv = [sys.executable, "-m", "extauthz", "serve", "--worker-index"]
    children = [
        subprocess.Popen([*argv, str(i)], env=env, preexec_fn=_die_with_parent)  # noqa: S603, PLW1509
        for i in range(workers)
    ]
    if settings.metrics_port:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=metrics_dir)
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry)
    log.info("extauthz supervising %d workers on %s:%d", workers, settings.host, settings.port)
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        while any(child.poll() is None for child in children):
            for child in children:
                if child.poll() is not None and not stopping:
                    log.error("worker %d exited with %s: stopping", child.pid, child.returncode)
                    code = 1
                    stop(signal.SIGTERM, None)
            time.sleep(0.2)
    finally:
        for child in children:
            multiprocess.mark_process_dead(child.pid, metrics_dir)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return code
