"""`pagoda router` / `python -m router`: flags -> RouterConfig -> serve."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from pagoda.cli_args import add_config_args, config_values
from pagoda.telemetry.logging import setup_logging
from pagoda.telemetry.tracing import otlp_endpoint
from router.config import RouterConfig
from router.upstream.policies import POLICIES

_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
API_KEY_ENV = "PAGODA_API_KEY"  # an API key from the environment: not in `ps` like --api-key


def parse_args(argv: list[str] | None = None, environ: dict | None = None) -> RouterConfig:
    p = argparse.ArgumentParser(
        prog="pagoda router",
        description="OpenAI-compatible HTTP router in front of the tokenizer and engines.",
    )
    add_config_args(p, RouterConfig, choices={"policy": sorted(POLICIES)})
    p.add_argument(
        "--tokenizer",
        action="append",
        default=[],
        metavar="[MODEL=]HOST:PORT",
        help="the tokenizer service of MODEL (repeatable: one per served model), or without MODEL= of every "
        "model that has none of its own (default 127.0.0.1:50052 when no --tokenizer is given)",
    )
    a = p.parse_args(argv)
    env_key = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
    if env_key:
        a.api_keys.append(env_key)
    default_tokenizer, model_tokenizers = _tokenizers(p, a.tokenizer)
    if a.affinity_blocks < 1 or a.affinity_load_factor < 1.0 or a.max_attempts < 1:
        p.error("--prefix-affinity-blocks and --max-attempts must be >= 1, --load-factor >= 1.0")
    if not a.kv_load_threshold >= 0:
        p.error("--kv-load-threshold must be >= 0")
    if a.grpc_keepalive_time_s <= 0 or a.tls_reload_interval_s <= 0:
        p.error("--grpc-keepalive-time and --tls-reload-interval must be > 0")
    positive = (
        "max_body_bytes",
        "max_prompt_tokens",
        "max_tokens_limit",
        "max_concurrent_streams_per_key",
        "max_concurrent_tokens_per_key",
        "max_sequences_per_request",
        "max_response_bytes",
        "max_connections",
        "body_parse_workers",
    )
    for name in positive:
        if getattr(a, name) is not None and getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.idle_timeout_s <= 0 or a.body_timeout_s <= 0:
        p.error("--idle-timeout and --body-timeout must be > 0")
    if (a.tls_cert is None) != (a.tls_key is None):
        p.error("--tls-cert and --tls-key go together")
    if (a.grpc_tls_cert is None) != (a.grpc_tls_key is None):
        p.error("--grpc-tls-cert and --grpc-tls-key go together")
    if (a.grpc_tls_cert or a.grpc_tls_server_name) and not a.grpc_tls_ca:
        p.error("--grpc-tls-cert and --grpc-tls-server-name need --grpc-tls-ca")
    if a.salt_cache_per_api_key and not (a.api_keys or a.api_key_file):
        p.error("--salt-cache-per-api-key needs API keys (--api-key or --api-key-file)")
    namespace = a.k8s_namespace
    if namespace is None and (a.k8s_service or a.k8s_label_selector):
        namespace = _NAMESPACE_FILE.read_text().strip() if _NAMESPACE_FILE.is_file() else "default"
    return RouterConfig(
        **{
            **config_values(a, RouterConfig),
            "tokenizer": default_tokenizer,
            "model_tokenizers": model_tokenizers,
            "k8s_namespace": namespace,
            "session_header": a.session_header.lower(),
            "otlp_endpoint": otlp_endpoint(a.otlp_endpoint),
        }
    )


def _tokenizers(
    p: argparse.ArgumentParser, values: list[str]
) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """--tokenizer values -> (the default address, (model, address) pairs). Addresses hold no `=`, so a
    value splits at its last one (model names may hold anything)."""
    if not values:
        return "127.0.0.1:50052", ()
    defaults = [v for v in values if "=" not in v]
    pairs = tuple(tuple(v.rsplit("=", 1)) for v in values if "=" in v)
    if len(defaults) > 1:
        p.error(f"--tokenizer: one address without MODEL= at most, got {defaults}")
    models = [m for m, _ in pairs]
    for model, address in pairs:
        if not model or not address:
            p.error(f"--tokenizer {model}={address}: give MODEL=HOST:PORT")
        if models.count(model) > 1:
            p.error(f"--tokenizer: model {model!r} is given twice")
    if any(not v for v in defaults):
        p.error("--tokenizer: an empty address")
    return (defaults[0] if defaults else None), pairs


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_format, "router")
    if not (config.engines or config.engine_dns or config.k8s_service or config.k8s_label_selector):
        print(
            "pagoda router: no engines: give --engine, --engine-dns or --k8s-service/--k8s-label-selector",
            file=sys.stderr,
        )
        return 2
    from pagoda.grpc_auth import TokenFileError
    from pagoda.telemetry.tracing import TracingUnavailable
    from pagoda.tls import TlsConfigError
    from router.app import serve
    from router.http_server import raise_fd_limit

    raise_fd_limit()  # connections are descriptors: take what the system allows (see http_server.py)
    try:
        asyncio.run(serve(config))
    except (TlsConfigError, TracingUnavailable, TokenFileError) as err:
        print(f"pagoda router: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the port is taken
        print(f"pagoda router: {err}", file=sys.stderr)
        return 1
    return 0
