"""`pagoda tokenizer` / `python -m tokenizer_service`: flags -> TokenizerConfig -> a running server.

SIGTERM or SIGINT: health turns NOT_SERVING, calls in flight get the grace period, then exit 0.
A model that cannot be loaded exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from pagoda.cli_args import add_config_args, config_values
from pagoda.grpc_auth import TokenFileError, read_tokens
from pagoda.telemetry.logging import setup_logging
from pagoda.telemetry.tracing import TracingUnavailable, otlp_endpoint
from pagoda.tls import TlsConfigError, add_server_tls_args, server_tls
from tokenizer_service.config import TokenizerConfig

log = logging.getLogger("tokenizer_service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagoda tokenizer", description="Run the gRPC tokenizer service.")
    add_config_args(p, TokenizerConfig)
    add_server_tls_args(p)
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.template_workers < 1:
        p.error("--template-workers must be at least 1")
    if args.max_input_tokens is not None and args.max_input_tokens < 1:
        p.error("--max-input-tokens must be at least 1")
    if args.template_max_output_bytes < 1:
        p.error("--template-max-output-bytes must be at least 1")
    if args.template_timeout_s <= 0 or args.template_memory_mb < 16:
        p.error("--template-timeout must be > 0 and --template-memory-mb at least 16")
    return args


def build_config(args: argparse.Namespace) -> TokenizerConfig:
    return TokenizerConfig(
        **{
            **config_values(args, TokenizerConfig),
            "otlp_endpoint": otlp_endpoint(args.otlp_endpoint),
            "tls": server_tls(args),
            "health_port": args.health_port,
        }
    )


def main(argv: list[str] | None = None) -> int:
    try:
        config = build_config(parse_args(argv))
        if config.grpc_token_file:
            read_tokens(config.grpc_token_file)  # a missing or empty file fails now, not at the first call
    except (TlsConfigError, TokenFileError) as err:
        print(f"pagoda tokenizer: {err}", file=sys.stderr)
        return 2
    setup_logging(config.log_format, "tokenizer")
    try:
        return asyncio.run(serve(config))
    except TracingUnavailable as err:
        print(f"pagoda tokenizer: {err}", file=sys.stderr)
        return 2


async def serve(config: TokenizerConfig) -> int:
    from tokenizer_service.server import TokenizerServer  # grpc and transformers load after flag errors

    server = TokenizerServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    load = asyncio.create_task(server.load())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({load, stopping}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if load.done() and load.exception() is not None:
        log.error("could not load the tokenizer: %s", load.exception())
        code = 1
    else:
        await stopping
        log.info("stopping: health NOT_SERVING, %.0f s for calls in flight", config.shutdown_grace_period)
    load.cancel()
    stopping.cancel()
    await server.stop()
    log.info("stopped")
    return code
