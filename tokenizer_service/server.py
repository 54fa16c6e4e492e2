"""The tokenizer service's gRPC server: TokenizerService, grpc.health.v1 and reflection.

Life cycle: `start()` listens at once with health NOT_SERVING (so probes see the process is up),
`load()` resolves the model and loads the tokenizers in a thread, then SERVING; `stop()` turns
health NOT_SERVING first, so that load balancers move away, then lets calls in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pagoda.grpc_auth import server_interceptors
from pagoda.grpc_keepalive import server_options
from pagoda.grpc_strict import add_servicer
from pagoda.health_port import serve_health
from pagoda.models import resolve_model, served_model_name
from pagoda.telemetry.tracing import setup_tracing
from pagoda.tokenizer.v1 import tokenizer_pb2, tokenizer_pb2_grpc
from tokenizer_service.config import TokenizerConfig
from tokenizer_service.metrics import TokenizerMetrics
from tokenizer_service.pool import TokenizerPool
from tokenizer_service.rpc_telemetry import RpcTelemetry
from tokenizer_service.servicer import TokenizerServicer
from tokenizer_service.template_sandbox import SandboxLimits, TemplateSandbox

log = logging.getLogger(__name__)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_NAME = tokenizer_pb2.DESCRIPTOR.services_by_name["TokenizerService"].full_name


class TokenizerServer:
    def __init__(self, config: TokenizerConfig) -> None:
        self.config = config
        self.metrics = TokenizerMetrics()
        self.tracing = setup_tracing("pagoda-tokenizer", config.otlp_endpoint)
        self.servicer = TokenizerServicer(
            self.metrics, RpcTelemetry(self.tracing, config.log_requests), config.max_input_tokens
        )
        self.health = health.aio.HealthServicer()
        self.pool: TokenizerPool | None = None
        self.sandbox: TemplateSandbox | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None  # --health-port

    async def start(self) -> None:
        size = self.config.max_message_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", size),
                ("grpc.max_send_message_length", size),
                *server_options(self.config.grpc_min_ping_interval_s),
            ],
            interceptors=server_interceptors(self.config.grpc_token_file),
        )
        # Undecodable request bytes are INVALID_ARGUMENT too (grpc alone would answer UNKNOWN).
        add_servicer(tokenizer_pb2_grpc.add_TokenizerServiceServicer_to_server, self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        await self._set_health(NOT_SERVING)
        address, tls = _address(self.config.host, self.config.port), self.config.tls
        if tls is None:
            self.port = server.add_insecure_port(address)
        else:
            self.port = server.add_secure_port(address, tls.credentials())
        await server.start()
        self._server = server
        if self.config.health_port:
            self._health_server = await serve_health(self.health, self.config.host, self.config.health_port)
        if self.config.metrics_port:
            self.metrics_port = self.metrics.serve(self.config.host, self.config.metrics_port)
        log.info(
            "tokenizer service listening on %s:%d (metrics port %s)",
            self.config.host,
            self.port,
            self.metrics_port or "off",
        )

    async def load(self) -> None:
        """Resolves the model (a .gguf file is converted once) and loads one tokenizer per worker."""
        config = self.config
        model_dir: Path = await asyncio.to_thread(resolve_model, config.model, config.model_cache_dir)
        pool = await asyncio.to_thread(TokenizerPool.load, model_dir, config.workers)
        info = pool.first.describe(model_dir, served_model_name(config.model))
        self.pool = pool
        if config.trust_request_chat_template:
            limits = SandboxLimits(
                config.template_workers,
                config.template_timeout_s,
                config.template_memory_mb * 2**20,
                config.template_max_output_bytes,
            )
            self.sandbox = TemplateSandbox(limits, dict(pool.first.hf.special_tokens_map))
            await self.sandbox.start()
        ceiling = pool.first.context_length(model_dir) or None
        self.servicer.set_ready(pool, info, ceiling, self.sandbox)
        await self._set_health(SERVING)
        log.info(
            "loaded the tokenizer of %s (%d workers, vocabulary %d, chat template: %s, at most %s input "
            "tokens, refused from their length in bytes: %s, request templates: %s)",
            model_dir,
            config.workers,
            info.vocab_size,
            "yes" if info.has_chat_template else "no",
            config.max_input_tokens or ceiling or "any number of",
            f"over {pool.first.bytes_per_token} bytes a token" if pool.first.bytes_per_token else "no",
            f"{config.template_workers} sandboxed workers" if self.sandbox else "refused",
        )

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()  # NOT_SERVING for good, even if a load finishes now
        if self._server is not None:
            await self._server.stop(self.config.shutdown_grace_period if grace is None else grace)
            self._server = None
        if self._health_server is not None:
            await self._health_server.stop(grace=None)
            self._health_server = None
        if self.pool is not None:
            self.pool.close()
        if self.sandbox is not None:
            self.sandbox.close()
        self.metrics.close()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # sends the spans still queued

    async def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
