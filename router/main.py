"""`pagoda router` / `python -m router`: flags -> RouterConfig -> serve."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

from router.config import RouterConfig
from router.policies import POLICIES

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
    g.add_argument("--log-format", choices=["text", "json"], default="text")
    a = p.parse_args(argv)
    if a.prefix_affinity_blocks < 1 or a.load_factor < 1.0 or a.max_attempts < 1:
        p.error("--prefix-affinity-blocks and --max-attempts must be >= 1, --load-factor >= 1.0")
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
        log_format=a.log_format,
    )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(log_format: str) -> None:
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    setup_logging(config.log_format)
    if not (config.engines or config.engine_dns or config.k8s_service or config.k8s_label_selector):
        print(
            "pagoda router: no engines: give --engine, --engine-dns or --k8s-service/--k8s-label-selector",
            file=sys.stderr,
        )
        return 2
    from router.app import serve

    try:
        asyncio.run(serve(config))
    except OSError as err:  # e.g. the port is taken
        print(f"pagoda router: {err}", file=sys.stderr)
        return 1
    return 0
