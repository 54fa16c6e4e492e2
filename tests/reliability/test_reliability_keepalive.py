"""The router's keepalive pings and the servers' ping policy agree (pagoda/grpc_keepalive.py): an idle
connection from the router to a tokenizer or an engine stays open across many ping intervals.

Intervals are shortened through the configs: the router asks for a ping every 0.2 s (gRPC's client
sends them at most once a second on a connection with no data, so about one a second goes out) and the
servers accept pings 0.1 s apart. Five idle seconds hold four or five pings. The control is a server
with gRPC's default policy, which is what the tokenizer had: every ping on a connection with no call
is a strike, and the third strike closes the connection with GOAWAY `too_many_pings`.
"""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from engine_service.core.config import EngineConfig
from engine_service.server.grpc_server import EngineServer
from engine_service.server.service_config import EngineServiceConfig
from router.upstream.channels import ChannelFactory
from tokenizer_service.config import TokenizerConfig
from tokenizer_service.server import TokenizerServer

PING_S = 0.2  # the router's keepalive interval in these tests
ACCEPT_S = 0.1  # the shortest ping gap the servers accept in these tests
IDLE_S = 5.0  # four or five pings: enough for the control's three strikes


async def states_while_idle(port: int, seconds: float) -> set[grpc.ChannelConnectivity]:
    """Connects as the router does, makes one call, then idles: every connectivity state seen meanwhile."""
    async with ChannelFactory(keepalive_time_s=PING_S)(f"127.0.0.1:{port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        seen = set()
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            seen.add(channel.get_state(try_to_connect=False))
            await asyncio.sleep(0.02)
        return seen


async def test_idle_connections_to_tokenizer_and_engine_stay_open_past_the_interval():
    tokenizer = TokenizerServer(
        TokenizerConfig(host="127.0.0.1", port=0, metrics_port=0, grpc_min_ping_interval_s=ACCEPT_S)
    )
    engine = EngineServer(
        EngineServiceConfig(
            engine=EngineConfig(model="unused"),
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            grpc_min_ping_interval_s=ACCEPT_S,
        )
    )
    await tokenizer.start()  # health answers without a model: no model is needed to hold a connection
    await engine.start()
    try:
        seen = await asyncio.gather(*(states_while_idle(p, IDLE_S) for p in (tokenizer.port, engine.port)))
        assert seen == [{grpc.ChannelConnectivity.READY}] * 2
    finally:
        await tokenizer.stop(0)
        await engine.stop()


async def test_a_server_with_grpcs_default_ping_policy_closes_the_idle_connection():
    server = grpc.aio.server()  # what the tokenizer had: pings at most every 5 min, none while idle
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        seen = await states_while_idle(port, IDLE_S)
        assert seen - {grpc.ChannelConnectivity.READY}, "the server should have sent GOAWAY too_many_pings"
    finally:
        await server.stop(0)
