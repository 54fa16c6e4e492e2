"""`pagoda engine` / `python -m engine_service`: flags -> EngineServiceConfig -> a running engine service.

The port is bound first (health NOT_SERVING), then the model loads and warms up (health SERVING).
SIGTERM or SIGINT drains: no new requests, in-flight ones get --shutdown-grace-period, then exit 0
(a second signal cuts the grace period short). A model that cannot be loaded exits 1; an engine loop
that dies or stalls exits 1 at once, so that Kubernetes restarts the pod.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from pagoda.cli_args import add_config_args, config_values
from pagoda.grpc_auth import read_tokens
from pagoda.telemetry.logging import setup_logging
from pagoda.telemetry.tracing import TracingUnavailable, otlp_endpoint
from pagoda.tls import add_server_tls_args, server_tls

log = logging.getLogger("engine_service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from engine_service.core.config import EngineConfig
    from engine_service.server.service_config import EngineServiceConfig

    p = argparse.ArgumentParser(prog="pagoda engine", description="Run the gRPC engine service.")
    p.add_argument(
        "--model", default=None, help="a Hugging Face model folder or a .gguf file (default: SmolLM2-135M)"
    )
    p.add_argument(
        "--model-cache-dir", default=None, help="where .gguf models are converted (default ~/.cache/pagoda)"
    )
    add_config_args(p, EngineConfig)
    add_config_args(p, EngineServiceConfig)
    add_server_tls_args(p)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from engine_service.core.config import EngineConfig
    from engine_service.server.service_config import EngineServiceConfig
    from pagoda.models import resolve_model, served_model_name

    if args.grpc_token_file:
        read_tokens(args.grpc_token_file)  # a missing or empty file fails here, before the model loads
    engine = EngineConfig(
        **{
            **config_values(args, EngineConfig),
            "model": str(resolve_model(args.model, args.model_cache_dir)),
            "served_model_name": args.served_model_name or served_model_name(args.model),
        }
    )
    return EngineServiceConfig(
        **{
            **config_values(args, EngineServiceConfig),
            "engine": engine,
            "otlp_endpoint": otlp_endpoint(args.otlp_endpoint),
            "tls": server_tls(args),
            "health_port": args.health_port,
        }
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_format, "engine")
    try:
        config = build_config(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"pagoda engine: {e}", file=sys.stderr)
        return 2
    try:
        code = asyncio.run(serve(config))
    except TracingUnavailable as e:
        print(f"pagoda engine: {e}", file=sys.stderr)
        return 2
    if code != 0:
        # The engine thread may be stuck inside a kernel: do not wait for it at interpreter exit.
        logging.shutdown()
        os._exit(code)
    return code


async def serve(config) -> int:
    from engine_service.server.grpc_server import EngineServer

    server = EngineServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.drain()))
    metrics = None
    if config.metrics_port:
        from engine_service.server.metrics import start_metrics_server

        metrics = start_metrics_server(
            config.host,
            config.metrics_port,
            server.state,
            config.engine.served_model_name or "",
            {
                "enable_prefix_caching": str(config.engine.enable_prefix_caching),
                "gpu_memory_utilization": str(config.engine.gpu_memory_utilization),
            },
        )
    try:
        await server.load()
    except Exception:
        log.exception("could not load the model")
        await server.stop(exit_code=1)
    code = await server.wait()
    if metrics is not None:
        metrics.shutdown()
    log.info("stopped (exit status %d)", code)
    return code
