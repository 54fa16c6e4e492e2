"""`pagoda tokenizer` / `python -m tokenizer_service`: flags -> TokenizerConfig -> a running server.

SIGTERM or SIGINT: health turns NOT_SERVING, calls in flight get the grace period, then exit 0.
A model that cannot be loaded exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from pagoda.grpc_auth import TokenFileError, add_server_auth_args, read_tokens
from pagoda.telemetry.logging import setup_logging
from pagoda.telemetry.tracing import TracingUnavailable, otlp_endpoint
from pagoda.tls import TlsConfigError, add_server_tls_args, server_tls
from tokenizer_service.config import TokenizerConfig

log = logging.getLogger("tokenizer_service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagoda tokenizer", description="Run the gRPC tokenizer service.")
    p.add_argument(
        "--model",
        default=None,
        help="a Hugging Face model folder or a .gguf file (default: SmolLM2-135M-Instruct)",
    )
    p.add_argument("--host", default="127.0.0.1", help="the address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=50052, help="gRPC port (0: any free port)")
    p.add_argument("--metrics-port", type=int, default=9101, help="Prometheus /metrics port (0: off)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="tokenizer threads, each with its own tokenizer (default: min(4, CPUs))",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--log-requests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per RPC: request id, status, token count, duration (never the text)",
    )
    p.add_argument(
        "--otlp-endpoint",
        default=None,
        help="export traces over OTLP/gRPC, e.g. http://otel-collector:4317 "
        "(default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off)",
    )
    p.add_argument(
        "--max-input-tokens",
        type=int,
        default=None,
        help="the most tokens one Encode may produce; longer input is refused before it is tokenized "
        "where its length in bytes tells (default: the model's context length)",
    )
    p.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="render a request's own chat template (in sandboxed worker processes, with the limits below); "
        "without it such a request is INVALID_ARGUMENT",
    )
    p.add_argument("--template-workers", type=int, default=2, help="processes rendering request templates")
    p.add_argument(
        "--template-timeout", type=float, default=2.0, help="seconds one request template may take"
    )
    p.add_argument("--template-memory-mb", type=int, default=256, help="memory one request template may use")
    p.add_argument(
        "--template-max-output-bytes",
        type=int,
        default=8 * 2**20,
        help="the longest prompt one request template may render",
    )
    add_server_tls_args(p)
    add_server_auth_args(p)
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.template_workers < 1:
        p.error("--template-workers must be at least 1")
    if args.max_input_tokens is not None and args.max_input_tokens < 1:
        p.error("--max-input-tokens must be at least 1")
    if args.template_max_output_bytes < 1:
        p.error("--template-max-output-bytes must be at least 1")
    if args.template_timeout <= 0 or args.template_memory_mb < 16:
        p.error("--template-timeout must be > 0 and --template-memory-mb at least 16")
    return args


def build_config(args: argparse.Namespace) -> TokenizerConfig:
    return TokenizerConfig(
        model=args.model,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        workers=args.workers,
        log_format=args.log_format,
        log_requests=args.log_requests,
        otlp_endpoint=otlp_endpoint(args.otlp_endpoint),
        tls=server_tls(args),
        health_port=args.health_port,
        max_input_tokens=args.max_input_tokens,
        trust_request_chat_template=args.trust_request_chat_template,
        template_workers=args.template_workers,
        template_timeout_s=args.template_timeout,
        template_memory_mb=args.template_memory_mb,
        template_max_output_bytes=args.template_max_output_bytes,
        grpc_token_file=args.grpc_token_file,
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
