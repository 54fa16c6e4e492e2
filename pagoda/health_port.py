"""`--health-port`: grpc.health.v1 alone, in plaintext, beside a service whose gRPC port speaks TLS.

Kubelet gRPC probes cannot speak TLS. This second server shares the service's HealthServicer (so it
gives the same answers, NOT_SERVING while loading or draining) and carries nothing else.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc


async def serve_health(servicer: health.aio.HealthServicer, host: str, port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if not server.add_insecure_port(address):
        raise OSError(f"cannot bind the health port {address}")
    await server.start()
    return server
