"""The tokenizer service's configuration: built once from flags in main() and passed down."""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.tls import ServerTls


@dataclass(frozen=True)
class TokenizerConfig:
    # As given on the command line: a model folder, a .gguf file, or None for the default model.
    model: str | None = None
    host: str = "127.0.0.1"  # loopback unless told: the chart passes --host 0.0.0.0
    port: int = 50052
    metrics_port: int = 9101  # 0 = no metrics endpoint
    # Worker threads, each with its own tokenizer: tokenization never runs on the event loop.
    workers: int = 4
    log_format: str = "text"  # text | json
    log_requests: bool = True  # one line per RPC (tokenizer_service.requests)
    otlp_endpoint: str | None = None  # OTLP/gRPC traces (from --otlp-endpoint or OTEL_EXPORTER_OTLP_*)
    # On SIGTERM: health turns NOT_SERVING, then calls in flight get this long to finish.
    shutdown_grace_period: float = 10.0
    # A 1M-token prompt is about 4 MB of text and 5 MB of ids: gRPC's 4 MB default is too small.
    max_message_bytes: int = 64 * 1024 * 1024
    model_cache_dir: str | None = None  # where .gguf conversions go (None: ~/.cache/pagoda/models)
    tls: ServerTls | None = None  # None: plaintext gRPC
    # A plaintext port that serves only grpc.health.v1, for kubelet probes when gRPC is TLS; 0: none.
    health_port: int = 0
    # The most tokens any Encode may produce (longer input: OUT_OF_RANGE, from its byte length where the
    # tokenizer allows, before tokenizing). None: the model's context length (the larger of the
    # tokenizer's model_max_length and config.json's max_position_embeddings).
    max_input_tokens: int | None = None
    # Callers must send `authorization: Bearer TOKEN` with a token of this file (pagoda/grpc_auth.py).
    grpc_token_file: str | None = None
    # A request's own chat template (ChatInput.chat_template) is refused unless this is set; then it
    # renders in a worker process (template_sandbox.py) under these limits.
    trust_request_chat_template: bool = False
    template_workers: int = 2
    template_timeout_s: float = 2.0
    template_memory_mb: int = 256
    template_max_output_bytes: int = 8 * 2**20
