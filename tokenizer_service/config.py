"""The tokenizer service's configuration: built once from flags in main() and passed down.

`pagoda tokenizer` makes a flag of each field from its type, default and help (pagoda/cli_args.py): a new
setting is a new field with `metadata={"help": ...}`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pagoda.grpc_keepalive import SERVER_MIN_PING_INTERVAL_S
from pagoda.tls import ServerTls


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class TokenizerConfig:
    # As given on the command line: a model folder, a .gguf file, or None for the default model.
    model: str | None = field(
        default=None,
        metadata={"help": "a Hugging Face model folder or a .gguf file (default: SmolLM2-135M-Instruct)"},
    )
    # Loopback unless told: the chart (and anyone serving other machines) passes --host 0.0.0.0.
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "address the gRPC server listens on (0.0.0.0: every interface)"},
    )
    port: int = field(default=50052, metadata={"help": "gRPC port (0: any free port)"})
    metrics_port: int = field(default=9101, metadata={"help": "Prometheus /metrics port (0: off)"})
    # Worker threads, each with its own tokenizer: tokenization never runs on the event loop.
    workers: int = field(
        default_factory=_default_workers,
        metadata={"help": "tokenizer threads, each with its own tokenizer (default: min(4, CPUs))"},
    )
    log_format: Literal["text", "json"] = field(default="text", metadata={"help": "log line format"})
    log_requests: bool = field(
        default=True,
        metadata={"help": "log one line per RPC: request id, status, token count, duration (never the text)"},
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata={
            "help": "export traces over OTLP/gRPC, e.g. http://otel-collector:4317 "
            "(default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off)"
        },
    )
    # On SIGTERM: health turns NOT_SERVING, then calls in flight get this long to finish.
    shutdown_grace_period: float = field(
        default=10.0, metadata={"help": "seconds calls in flight get to finish after SIGTERM"}
    )
    # A 1M-token prompt is about 4 MB of text and 5 MB of ids: gRPC's 4 MB default is too small.
    max_message_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"help": "largest gRPC message, in or out, in bytes"}
    )
    model_cache_dir: str | None = field(
        default=None, metadata={"help": "where .gguf models are converted (default ~/.cache/pagoda)"}
    )
    tls: ServerTls | None = field(default=None, metadata={"cli": False})  # None: plaintext gRPC (TLS flags)
    # A plaintext port that serves only grpc.health.v1, for kubelet probes when gRPC is TLS; 0: none. Its
    # flag is one of the TLS flags both gRPC services share (pagoda/tls.py).
    health_port: int = field(default=0, metadata={"cli": False})
    # The most tokens any Encode may produce (longer input: OUT_OF_RANGE, from its byte length where the
    # tokenizer allows, before tokenizing). None: the model's context length (the larger of the
    # tokenizer's model_max_length and config.json's max_position_embeddings).
    max_input_tokens: int | None = field(
        default=None,
        metadata={
            "help": "the most tokens one Encode may produce; longer input is refused before it is tokenized "
            "where its length in bytes tells (default: the model's context length)"
        },
    )
    # Callers must send `authorization: Bearer TOKEN` with a token of this file (pagoda/grpc_auth.py).
    grpc_token_file: str | None = field(
        default=None,
        metadata={
            "help": "accept only callers with `authorization: Bearer TOKEN` for a token of this file (one a "
            "line); grpc.health.v1 stays open"
        },
    )
    # A request's own chat template (ChatInput.chat_template) is refused unless this is set; then it
    # renders in a worker process (template_sandbox.py) under these limits.
    trust_request_chat_template: bool = field(
        default=False,
        metadata={
            "help": "render a request's own chat template (in sandboxed worker processes, with the "
            "--template-* limits); without it such a request is INVALID_ARGUMENT"
        },
    )
    template_workers: int = field(default=2, metadata={"help": "processes rendering request templates"})
    template_timeout_s: float = field(
        default=2.0, metadata={"help": "seconds one request template may take to render"}
    )
    template_memory_mb: int = field(
        default=256, metadata={"help": "memory one request template's worker may use, in MiB"}
    )
    template_max_output_bytes: int = field(
        default=8 * 2**20, metadata={"help": "the longest prompt one request template may render, in bytes"}
    )
    # Clients' keepalive pings this far apart or more are accepted, calls or not (pagoda/grpc_keepalive.py).
    grpc_min_ping_interval_s: float = field(
        default=SERVER_MIN_PING_INTERVAL_S,
        metadata={
            "help": "accept clients' keepalive pings this many seconds apart or more, with or without calls "
            "in flight (the router pings every 10 s); closer pings close the connection (too_many_pings)"
        },
    )
