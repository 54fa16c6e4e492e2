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

from pagoda.telemetry.logging import setup_logging
from pagoda.telemetry.tracing import TracingUnavailable, otlp_endpoint
from pagoda.tls import add_server_tls_args, server_tls

log = logging.getLogger("engine_service")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagoda engine", description="Run the gRPC engine service.")
    p.add_argument(
        "--model", default=None, help="a Hugging Face model folder or a .gguf file (default: SmolLM2-135M)"
    )
    p.add_argument(
        "--model-cache-dir", default=None, help="where .gguf models are converted (default ~/.cache/pagoda)"
    )
    p.add_argument("--served-model-name", default=None, help="the name clients use (default: from --model)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=50051, help="gRPC port (0: any free port)")
    p.add_argument("--metrics-port", type=int, default=9100, help="Prometheus /metrics port (0: off)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument(
        "--custom-all-reduce",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="tensor parallelism: decode-sized all-reduces over symmetric memory, fused with the next "
        "RMSNorm where they can be (--no-custom-all-reduce: all through NCCL)",
    )
    p.add_argument(
        "--pdl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="programmatic dependent launch of the Triton kernels on sm_90+ GPUs: each one launches while "
        "the one before it drains (--no-pdl: plain stream order)",
    )
    p.add_argument("--max-model-len", type=int, default=None, help="default: the model's context length")
    p.add_argument("--max-num-seqs", type=int, default=512, help="most sequences in one batch")
    p.add_argument("--max-num-batched-tokens", type=int, default=8192, help="token budget of one step")
    p.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument(
        "--num-kv-blocks", type=int, default=None, help="KV-cache blocks (default: from free memory)"
    )
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--load-format", choices=("auto", "dummy"), default="auto", help="dummy: random weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--runner",
        choices=("auto", "generate", "pooling"),
        default="auto",
        help="what to serve: generation, or embeddings (pooling: one prefill per input, the Embed RPC); "
        "auto: embeddings for a sentence-transformers folder or a bare ...Model architecture",
    )
    p.add_argument(
        "--max-waiting",
        type=int,
        default=1024,
        help="accepted requests with no output yet; past it, RESOURCE_EXHAUSTED",
    )
    p.add_argument(
        "--shutdown-grace-period",
        type=float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM",
    )
    p.add_argument(
        "--step-timeout",
        type=float,
        default=300.0,
        help="an engine step running longer than this many seconds fails the engine (exit 1)",
    )
    p.add_argument(
        "--stream-interval",
        type=int,
        default=1,
        help="tokens a stream collects before a message is sent (the first token and finishes go at once)",
    )
    p.add_argument(
        "--engine-core",
        choices=("process", "thread"),
        default="process",
        help="run the engine loop in a process of its own (default: streaming never takes the GIL from "
        "the GPU loop) or in a thread of the gRPC process",
    )
    p.add_argument("--log-format", choices=("text", "json"), default="text")
    p.add_argument(
        "--log-requests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per request: ids, status, finish reason, token counts, timings (never the prompt)",
    )
    p.add_argument(
        "--log-stats-interval",
        type=float,
        default=5.0,
        help="seconds between the throughput / running / waiting / KV-usage log lines (0: none)",
    )
    p.add_argument(
        "--otlp-endpoint",
        default=None,
        help="export traces over OTLP/gRPC, e.g. http://otel-collector:4317 "
        "(default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off)",
    )
    add_server_tls_args(p)
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    from engine_service.core.config import EngineConfig
    from engine_service.server.service_config import EngineServiceConfig
    from pagoda.models import resolve_model, served_model_name

    engine = EngineConfig(
        model=str(resolve_model(args.model, args.model_cache_dir)),
        served_model_name=args.served_model_name or served_model_name(args.model),
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching,
        num_kv_blocks=args.num_kv_blocks,
        gpu_memory_utilization=args.gpu_memory_utilization,
        load_format=args.load_format,
        seed=args.seed,
        enforce_eager=args.enforce_eager,
        tensor_parallel_size=args.tensor_parallel_size,
        custom_all_reduce=args.custom_all_reduce,
        pdl=args.pdl,
        runner=args.runner,
    )
    return EngineServiceConfig(
        engine=engine,
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        max_waiting=args.max_waiting,
        shutdown_grace_period_s=args.shutdown_grace_period,
        step_timeout_s=args.step_timeout,
        engine_core=args.engine_core,
        stream_interval=args.stream_interval,
        log_format=args.log_format,
        log_requests=args.log_requests,
        log_stats_interval_s=args.log_stats_interval,
        otlp_endpoint=otlp_endpoint(args.otlp_endpoint),
        tls=server_tls(args),
        health_port=args.health_port,
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
