"""`pagoda router` / `python -m router`: flags -> RouterConfig -> serve."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from pagoda.telemetry.logging import setup_logging
from pagoda.telemetry.tracing import otlp_endpoint
from router.config import RouterConfig
from router.upstream.policies import POLICIES

_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def parse_args(argv: list[str] | None = None) -> RouterConfig:
    p = argparse.ArgumentParser(
        prog="pagoda router",
        description="OpenAI-compatible HTTP router in front of the tokenizer and engines.",
    )
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tokenizer", default="127.0.0.1:50052", help="tokenizer service HOST:PORT")
    g = p.add_argument_group("engine discovery (any mix)")
    g.add_argument(
        "--engine", action="append", default=[], metavar="HOST:PORT", help="a static engine (repeatable)"
    )
    g.add_argument(
        "--engine-dns",
        action="append",
        default=[],
        metavar="NAME:PORT",
        help="a DNS name (e.g. a headless Service) re-resolved periodically (repeatable)",
    )
    g.add_argument("--dns-interval", type=float, default=5.0, help="seconds between DNS resolutions")
    g.add_argument(
        "--k8s-namespace", help="namespace of the engines' EndpointSlices (default: the pod's own)"
    )
    g.add_argument("--k8s-service", help="the engines' Service: watch its EndpointSlices")
    g.add_argument("--k8s-label-selector", help="watch EndpointSlices with these labels")
    g.add_argument("--k8s-engine-port", type=int, default=50051)
    g.add_argument("--k8s-resync", type=float, default=300.0, help="seconds between full re-lists")
    g.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster config, else ~/.kube/config)")
    g = p.add_argument_group("routing and health")
    g.add_argument("--policy", choices=sorted(POLICIES), default="prefix_affinity")
    g.add_argument("--session-header", default="x-session-id", help="the session policy's key header")
    g.add_argument(
        "--prefix-affinity-blocks", type=int, default=8, help="leading KV blocks hashed for affinity"
    )
    g.add_argument(
        "--load-factor",
        type=float,
        default=1.25,
        help="affinity skips engines above this times the mean load, plus one",
    )
    g.add_argument("--health-interval", type=float, default=1.0, help="seconds between engine probes")
    g.add_argument("--connect-timeout", type=float, default=5.0)
    g.add_argument("--first-token-timeout", type=float, default=120.0)
    g.add_argument("--max-attempts", type=int, default=3, help="engines tried before the first token")
    g = p.add_argument_group("security and observability")
    g.add_argument("--api-key", action="append", default=[], help="accepted API key (repeatable)")
    g.add_argument("--api-key-file", help="file with one API key per line, re-read when it changes")
    g.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True, help="serve /metrics")
    g.add_argument(
        "--engine-metrics-url",
        action="append",
        default=[],
        help="an engine's /metrics URL whose metrics /metrics appends, labelled by engine (repeatable; "
        "pagoda serve passes its engines')",
    )
    g.add_argument("--log-format", choices=["text", "json"], default="text")
    g.add_argument(
        "--log-requests",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="log one line per request: id, model, status, tokens, timings",
    )
    g.add_argument("--log-prompts", action="store_true", help="put the messages / prompt in that line")
    g.add_argument(
        "--otlp-endpoint",
        help="export traces over OTLP/gRPC, e.g. http://otel-collector:4317 "
        "(default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off)",
    )
    g.add_argument(
        "--salt-cache-per-api-key",
        action="store_true",
        help="salt each API key's prefix cache apart, so that no key can probe another's cached prompts",
    )
    g = p.add_argument_group("TLS")
    g.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain (with --tls-key)")
    g.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    g.add_argument("--grpc-tls-ca", help="reach engines and the tokenizer over TLS, trusting this PEM CA")
    g.add_argument("--grpc-tls-cert", help="client certificate for mutual TLS to engines and tokenizer")
    g.add_argument("--grpc-tls-key", help="the PEM private key of --grpc-tls-cert")
    g.add_argument(
        "--grpc-tls-server-name",
        help="the name expected in engine and tokenizer certificates (default: the address dialled; "
        "set it when engines are found by IP)",
    )
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-body-bytes", type=int, default=64 * 1024 * 1024, help="larger request bodies get a 413"
    )
    g.add_argument("--max-prompt-tokens", type=int, help="longer prompts get a 400")
    g.add_argument(
        "--max-tokens-limit", type=int, help="a larger max_tokens gets a 400; the cap when none is given"
    )
    g.add_argument(
        "--max-concurrent-streams-per-key",
        type=int,
        help="generation requests in flight per API key (all callers share one budget without keys); "
        "more get a 429 with Retry-After",
    )
    a = p.parse_args(argv)
    if a.prefix_affinity_blocks < 1 or a.load_factor < 1.0 or a.max_attempts < 1:
        p.error("--prefix-affinity-blocks and --max-attempts must be >= 1, --load-factor >= 1.0")
    for flag in ("max_body_bytes", "max_prompt_tokens", "max_tokens_limit", "max_concurrent_streams_per_key"):
        if getattr(a, flag) is not None and getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1")
    if (a.tls_cert is None) != (a.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if (a.grpc_tls_cert is None) != (a.grpc_tls_key is None):
        p.error("--grpc-tls-cert and --grpc-tls-key go together")
    if (a.grpc_tls_cert or a.grpc_tls_server_name) and not a.grpc_tls_ca:
        p.error("--grpc-tls-cert and --grpc-tls-server-name need --grpc-tls-ca")
    if a.salt_cache_per_api_key and not (a.api_key or a.api_key_file):
        p.error("--salt-cache-per-api-key needs API keys (--api-key or --api-key-file)")
    namespace = a.k8s_namespace
    if namespace is None and (a.k8s_service or a.k8s_label_selector):
        namespace = _NAMESPACE_FILE.read_text().strip() if _NAMESPACE_FILE.is_file() else "default"
    return RouterConfig(
        host=a.host,
        port=a.port,
        tokenizer=a.tokenizer,
        engines=tuple(a.engine),
        engine_dns=tuple(a.engine_dns),
        dns_interval_s=a.dns_interval,
        k8s_namespace=namespace,
        k8s_service=a.k8s_service,
        k8s_label_selector=a.k8s_label_selector,
        k8s_engine_port=a.k8s_engine_port,
        k8s_resync_s=a.k8s_resync,
        kubeconfig=a.kubeconfig,
        policy=a.policy,
        session_header=a.session_header.lower(),
        affinity_blocks=a.prefix_affinity_blocks,
        affinity_load_factor=a.load_factor,
        health_interval_s=a.health_interval,
        connect_timeout_s=a.connect_timeout,
        first_token_timeout_s=a.first_token_timeout,
        max_attempts=a.max_attempts,
        api_keys=tuple(a.api_key),
        api_key_file=a.api_key_file,
        metrics=a.metrics,
        engine_metrics_urls=tuple(a.engine_metrics_url),
        log_format=a.log_format,
        log_requests=a.log_requests,
        log_prompts=a.log_prompts,
        otlp_endpoint=otlp_endpoint(a.otlp_endpoint),
        salt_cache_per_api_key=a.salt_cache_per_api_key,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        grpc_tls_ca=a.grpc_tls_ca,
        grpc_tls_cert=a.grpc_tls_cert,
        grpc_tls_key=a.grpc_tls_key,
        grpc_tls_server_name=a.grpc_tls_server_name,
        max_body_bytes=a.max_body_bytes,
        max_prompt_tokens=a.max_prompt_tokens,
        max_tokens_limit=a.max_tokens_limit,
        max_concurrent_streams_per_key=a.max_concurrent_streams_per_key,
    )


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_format, "router")
    if not (config.engines or config.engine_dns or config.k8s_service or config.k8s_label_selector):
        print(
            "pagoda router: no engines: give --engine, --engine-dns or --k8s-service/--k8s-label-selector",
            file=sys.stderr,
        )
        return 2
    from pagoda.telemetry.tracing import TracingUnavailable
    from pagoda.tls import TlsConfigError
    from router.app import serve

    try:
        asyncio.run(serve(config))
    except (TlsConfigError, TracingUnavailable) as err:
        print(f"pagoda router: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the port is taken
        print(f"pagoda router: {err}", file=sys.stderr)
        return 1
    return 0
