"""The gRPC server: the gateway service, health checking, reflection, graceful stop.

    server, port = await create_server(load_config("teachers.yaml"), "127.0.0.1:0")
    await server.start()
    ...
    await server.stop(grace=5)

Health (``grpc.health.v1``) reports ``SERVING`` for ``""`` (the whole server) and for
``omniopd.v1.TeacherGateway`` once every teacher has started, and ``NOT_SERVING`` from the
moment a stop begins, so a load balancer drains the replica before it goes. Health and
reflection stay open when a bearer token is required.
"""

from __future__ import annotations

import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from omniopd.gateway.config import GatewayConfig
from omniopd.gateway.core import DEFAULT_PREFIX, Gateway
from omniopd.gateway.metrics import GatewayMetrics
from omniopd.gateway.retry import DEFAULT_BACKOFF, Backoff
from omniopd.gateway.service import SERVICE_NAME, TeacherGatewayService, add_to_server

log = logging.getLogger(__name__)

# Above the largest request validation lets through (4 bytes per character), so an oversize
# request gets validation's INVALID_ARGUMENT naming the limit, not a transport error.
MESSAGE_SLACK_BYTES = 1 << 20


class GatewayServer:
    """A started-or-startable gateway: the gRPC server plus the teachers behind it."""

    def __init__(self, server: grpc.aio.Server, gateway: Gateway, health_servicer) -> None:  # type: ignore[no-untyped-def]
        self.grpc_server = server
        self.gateway = gateway
        self._health = health_servicer
        self._stopped = False

    @property
    def metrics(self) -> GatewayMetrics:
        return self.gateway.metrics

    async def start(self) -> None:
        await self.grpc_server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, let calls under way finish for ``grace`` seconds, then close."""
        if self._stopped:
            return
        self._stopped = True
        await self._health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace)
        await self.gateway.aclose()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def create_server(
    config: GatewayConfig,
    address: str,
    *,
    token: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str = DEFAULT_PREFIX,
    metrics: GatewayMetrics | None = None,
    backoff: Backoff = DEFAULT_BACKOFF,
) -> tuple[GatewayServer, int]:
    """Start every teacher and bind ``address`` (``host:0`` picks a free port).

    Returns the server (not yet serving: call ``await server.start()``) and the bound port.
    """
    gateway = Gateway(
        config, redis_url=redis_url, redis_prefix=redis_prefix, metrics=metrics, backoff=backoff
    )
    try:
        await gateway.start()
        limit = 4 * config.max_request_chars + MESSAGE_SLACK_BYTES
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                ("grpc.so_reuseport", 0),
            ]
        )
        add_to_server(TeacherGatewayService(gateway, token=token), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", SERVICE_NAME):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        port = server.add_insecure_port(address)
    except BaseException:
        await gateway.aclose()
        raise
    if port == 0:
        await gateway.aclose()
        raise OSError(f"cannot bind {address!r}: address in use or not available")
    log.info("gateway listening on %s (port %d)", address, port)
    return GatewayServer(server, gateway, health_servicer), port
