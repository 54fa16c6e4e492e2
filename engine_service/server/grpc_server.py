"""The engine's gRPC server and its life: bind, load + warm up, serve, drain, exit.

    start()   port bound; health NOT_SERVING; RPCs answer UNAVAILABLE ("still loading")
    load()    weights loaded and one warm-up request run (in a worker thread); health SERVING
    drain()   SIGTERM: health NOT_SERVING, new Generate calls UNAVAILABLE; in-flight requests get up to the
              grace period to finish, then are aborted; the server stops and wait() returns 0
    fatal     the engine loop died or stalled: health NOT_SERVING, streams end INTERNAL, wait() returns 1

Health keeps answering while draining, so Kubernetes sees NOT_SERVING rather than a refused connection.
With --tls-cert the port speaks TLS (mutual with --tls-client-ca); --health-port adds a plaintext port
with health alone, for kubelet probes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from engine_service.core.config import EngineConfig
from engine_service.engine.async_engine import AsyncEngine
from engine_service.engine.engine import Engine
from engine_service.engine.engine_loop import ProcessCore, ThreadCore, warm_up
from engine_service.engine.tokenizer import load_tokenizer
from engine_service.server import convert
from engine_service.server.request_telemetry import RequestTelemetry
from engine_service.server.service_config import EngineServiceConfig
from engine_service.server.servicer import EngineServicer
from engine_service.server.serving_state import ServingState
from engine_service.server.stats_logger import log_stats
from pagoda.engine.v1 import engine_pb2, engine_pb2_grpc
from pagoda.grpc_auth import server_interceptors
from pagoda.grpc_keepalive import server_options
from pagoda.grpc_strict import add_servicer
from pagoda.health_port import serve_health
from pagoda.prompt_bound import max_bytes_per_token
from pagoda.telemetry.tracing import setup_tracing

if TYPE_CHECKING:
    from engine_service.server.metrics import EngineMetrics

log = logging.getLogger(__name__)

SERVICE_NAME = engine_pb2.DESCRIPTOR.services_by_name["EngineService"].full_name
# Generate streams to hundreds of clients at once; the default limits suit that. Messages are small.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 2**20),
    ("grpc.so_reuseport", 0),
    # A call waits in grpc until the event loop takes it, one at a time. In a flood (3,000 streams on one
    # channel) hundreds used to end as a bare CANCELLED that the service never saw nor logged: grpc
    # cancels calls past its backlog of waiting calls (1,000, then at random up to 3,000), and those that
    # wait 30 s. With a large backlog and no time limit, every call is taken, then served or refused by
    # the service itself (RESOURCE_EXHAUSTED past --max-waiting, in its log). (A limit on streams per
    # connection would not do: a client that opens thousands at once gets REFUSED_STREAM, UNAVAILABLE.)
    ("grpc.server.max_pending_requests", 16384),
    ("grpc.server.max_pending_requests_hard_limit", 32768),
    ("grpc.server_max_unrequested_time_in_server", 3600),
]


class EngineServer:
    def __init__(
        self, config: EngineServiceConfig, engine_factory: Callable[[EngineConfig], Engine] = Engine
    ):
        """`engine_factory` builds the Engine (in the engine process with --engine-core process, so it must
        pickle): Engine, or a benchmark rig's engine over a stand-in device (benchmarks/serving_rig.py)."""
        self.config = config
        self._engine_factory = engine_factory
        self.state = ServingState()
        self.port: int | None = None
        self.exit_code: int | None = None
        self._server = grpc.aio.server(
            options=GRPC_OPTIONS + server_options(config.grpc_min_ping_interval_s),
            interceptors=server_interceptors(config.grpc_token_file),
        )
        self._health = health.aio.HealthServicer()
        self._health_server: grpc.aio.Server | None = None  # --health-port
        self._done = asyncio.Event()
        self._force = asyncio.Event()  # a second SIGTERM: stop draining now
        self.tracing = setup_tracing("pagoda-engine", config.otlp_endpoint)
        self._stats_log: asyncio.Task | None = None

    @property
    def engine(self) -> AsyncEngine | None:
        return self.state.engine

    async def start(self) -> int:
        config = self.config
        telemetry = RequestTelemetry(self.tracing, config.log_requests, config.engine.served_model_name or "")
        servicer = EngineServicer(self.state, telemetry)
        # Undecodable request bytes are INVALID_ARGUMENT too (grpc alone would answer UNKNOWN).
        add_servicer(engine_pb2_grpc.add_EngineServiceServicer_to_server, servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )
        address = f"{self.config.host}:{self.config.port}"
        tls = self.config.tls
        if tls is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, tls.credentials())
        if not self.port:
            raise OSError(f"cannot bind {address}")
        await self._server.start()
        if self.config.health_port:
            self._health_server = await serve_health(self._health, self.config.host, self.config.health_port)
        await self._set_health(serving=False)
        log.info(
            "engine gRPC server listening on %s:%d%s (loading the model)",
            self.config.host,
            self.port,
            "" if tls is None else " with mutual TLS" if tls.client_ca else " with TLS",
        )
        return self.port

    async def load(self, engine: Engine | None = None) -> None:
        """Builds the engine (unless given) and warms it up off the event loop, then serves.

        --engine-core thread: the engine is built here and its loop runs in a thread of this process;
        process: a spawned process builds it and runs the loop (a given engine always runs in a thread).
        """
        config = self.config
        if engine is None and config.engine_core == "process":
            core = ProcessCore(config.engine, config.log_format, self._engine_factory)
            await asyncio.to_thread(core.load)
            tokenizer = await asyncio.to_thread(load_tokenizer, config.engine.model)
        else:
            if engine is None:
                engine = await asyncio.to_thread(self._engine_factory, config.engine)
            # No gc.freeze() here (the process core does it): this process is shared with its embedder.
            await asyncio.to_thread(warm_up, engine)
            core, tokenizer = ThreadCore(engine), engine.tokenizer
        if self.state.draining:  # SIGTERM came while loading
            core.stop()
            return
        async_engine = AsyncEngine(
            core,
            tokenizer,
            max_waiting=config.max_waiting,
            step_timeout_s=config.step_timeout_s,
            max_logprobs=config.engine.max_logprobs,
            stream_interval=config.stream_interval,
            on_fatal=self._on_fatal,
            metrics=self._metrics(core),
            liveness_timeout_s=config.liveness_timeout_s,
            on_liveness=self._on_liveness,
        )
        async_engine.start()
        if config.log_stats_interval_s:
            self._stats_log = asyncio.create_task(
                log_stats(lambda: async_engine.stats, config.log_stats_interval_s), name="engine-stats-log"
            )
        self.state.token_texts = convert.TokenTexts(tokenizer)
        self.state.bytes_per_token = max_bytes_per_token(tokenizer) if tokenizer is not None else None
        self.state.engine = async_engine
        await self._set_health(serving=True)
        info = async_engine.model_info
        log.info(
            "serving %s (%s, %s on %s, %d KV blocks of %d tokens; engine loop in a %s)",
            info.served_model_name,
            info.architecture,
            info.dtype,
            info.device,
            info.num_kv_blocks,
            info.block_size,
            "process" if isinstance(core, ProcessCore) else "thread",
        )

    def _metrics(self, core) -> EngineMetrics | None:
        """What the front observes for Prometheus; None with the metrics port off (nothing observed)."""
        if not self.config.metrics_port:
            return None
        from engine_service.server.metrics import EngineMetrics

        info = core.info
        return EngineMetrics(
            info.stats, info.model_info.max_model_len, self.config.engine.max_num_batched_tokens
        )

    async def drain(self) -> None:
        """Stops taking requests, lets in-flight ones finish within the grace period, then stops (exit 0)."""
        if self.state.draining:
            self._force.set()
            return
        self.state.draining = True
        await self._set_health(serving=False)
        engine = self.state.engine
        grace = self.config.shutdown_grace_period_s
        if engine is not None and engine.num_requests:
            log.info("draining: %d requests in flight, %g s grace period", engine.num_requests, grace)
            try:
                await asyncio.wait_for(self._until_idle(engine), grace)
            except TimeoutError:
                log.warning("grace period over: aborting %d requests", engine.num_requests)
        await self.stop(exit_code=0)

    async def stop(self, exit_code: int = 0) -> None:
        if self._done.is_set():
            return
        if self.exit_code is None:
            self.exit_code = exit_code
        engine = self.state.engine
        if engine is not None:
            engine.abort_all()  # streams still open end with finish_reason ABORT ...
        await self._server.stop(grace=1.0)  # ... and get a moment to send it
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
        if engine is not None:
            await engine.shutdown()
        await self._stop_telemetry()
        self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        return self.exit_code or 0

    async def _until_idle(self, engine: AsyncEngine) -> None:
        while engine.num_requests and not self._force.is_set() and engine.error is None:
            await asyncio.sleep(0.05)

    def _on_liveness(self, alive: bool) -> None:
        """The engine process froze (False) or responds again (True): health follows."""
        if not self.state.draining and not self._done.is_set():
            asyncio.get_running_loop().create_task(self._set_health(serving=alive))

    def _on_fatal(self, reason: str) -> None:
        # Kubernetes restarts the pod when the process exits non-zero.
        log.critical("engine failed (%s): exiting with status 1", reason)
        self.exit_code = 1
        asyncio.get_running_loop().create_task(self._fail())

    async def _stop_telemetry(self) -> None:
        if self._stats_log is not None:
            self._stats_log.cancel()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # sends the spans still queued

    async def _fail(self) -> None:
        await self._set_health(serving=False)
        await self._server.stop(grace=1.0)
        if self._stats_log is not None:  # spans still queued are dropped: exit now, to be restarted
            self._stats_log.cancel()
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
        self._done.set()

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
