"""The router's one configuration object, built once from flags in `main()` and passed down.

`pagoda router` makes a flag of each field from its type, default and help (pagoda/cli_args.py); "flag"
keeps a flag's name where it differs from the field's, "group" sorts `--help`. A new setting is a new field
with `metadata={"help": ...}`: its flag follows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DISCOVERY = "engine discovery (any mix)"
ROUTING = "routing and health"
SECURITY = "security and observability"
TLS = "TLS"
LIMITS = "limits"
MODEL_OUTPUT = "model output"
CONNECTIONS = "connections"


@dataclass(frozen=True)
class RouterConfig:
    host: str = field(default="0.0.0.0", metadata={"help": "address the HTTP server listens on"})
    port: int = field(default=8000, metadata={"help": "HTTP port"})
    # The tokenizer service of every model without its own (a host:port; any gRPC target such as
    # dns:///name:port works too); None: each model needs its own in model_tokenizers. Both come from the
    # repeatable --tokenizer [MODEL=]HOST:PORT (router/main.py).
    tokenizer: str | None = field(default="127.0.0.1:50052", metadata={"cli": False})
    # (served model name, tokenizer address) pairs: each model tokenized by its own weights' tokenizer.
    model_tokenizers: tuple[tuple[str, str], ...] = field(default=(), metadata={"cli": False})

    # Engine discovery: any mix of a static list, DNS names and Kubernetes EndpointSlices.
    engines: tuple[str, ...] = field(
        default=(),
        metadata={
            "flag": "engine",
            "metavar": "HOST:PORT",
            "group": DISCOVERY,
            "help": "a static engine (repeatable)",
        },
    )
    engine_dns: tuple[str, ...] = field(
        default=(),
        metadata={
            "metavar": "NAME:PORT",
            "group": DISCOVERY,
            "help": "a DNS name (e.g. a headless Service) re-resolved periodically (repeatable)",
        },
    )
    dns_interval_s: float = field(
        default=5.0, metadata={"group": DISCOVERY, "help": "seconds between DNS resolutions"}
    )
    k8s_namespace: str | None = field(
        default=None,
        metadata={
            "group": DISCOVERY,
            "help": "namespace of the engines' EndpointSlices (default: the pod's own)",
        },
    )
    k8s_service: str | None = field(
        default=None, metadata={"group": DISCOVERY, "help": "the engines' Service: watch its EndpointSlices"}
    )
    k8s_label_selector: str | None = field(
        default=None, metadata={"group": DISCOVERY, "help": "watch EndpointSlices with these labels"}
    )
    k8s_engine_port: int = field(
        default=50051, metadata={"group": DISCOVERY, "help": "the engines' gRPC port in the EndpointSlices"}
    )
    k8s_resync_s: float = field(
        default=300.0, metadata={"group": DISCOVERY, "help": "seconds between full re-lists"}
    )
    kubeconfig: str | None = field(
        default=None,
        metadata={
            "group": DISCOVERY,
            "help": "kubeconfig file (default: in-cluster config in a pod, else ~/.kube/config)",
        },
    )

    # Picking an engine.
    policy: str = field(
        default="prefix_affinity",
        metadata={"group": ROUTING, "help": "how an engine is picked (router/upstream/policies)"},
    )
    session_header: str = field(
        default="x-session-id", metadata={"group": ROUTING, "help": "the session policy's key header"}
    )
    affinity_blocks: int = field(
        default=8,
        metadata={
            "flag": "prefix-affinity-blocks",
            "group": ROUTING,
            "help": "leading full KV blocks of the prompt hashed for prefix affinity",
        },
    )
    affinity_load_factor: float = field(
        default=1.25,
        metadata={
            "flag": "load-factor",
            "group": ROUTING,
            "help": "affinity skips engines above this times the mean load, plus one",
        },
    )

    kv_load_threshold: float = field(
        default=4.0,
        metadata={
            "group": ROUTING,
            "help": "kv_aware: engines whose load is more than this above the least loaded one's are passed "
            "over, however much of the prompt they have cached",
        },
    )

    # Health and timeouts.
    health_interval_s: float = field(
        default=1.0, metadata={"group": ROUTING, "help": "seconds between engine probes"}
    )
    probe_timeout_s: float = field(
        default=2.0, metadata={"group": ROUTING, "help": "seconds an engine probe may take"}
    )
    probe_failures_to_eject: int = field(
        default=2, metadata={"group": ROUTING, "help": "failed probes in a row that eject an engine"}
    )
    max_backoff_s: float = field(
        default=10.0,
        metadata={"group": ROUTING, "help": "most seconds before an ejected engine is probed again"},
    )
    connect_timeout_s: float = field(
        default=5.0, metadata={"group": ROUTING, "help": "seconds to open a stream to an engine"}
    )
    first_token_timeout_s: float = field(
        default=120.0, metadata={"group": ROUTING, "help": "seconds an engine may take to the first token"}
    )
    tokenizer_timeout_s: float = field(
        default=30.0, metadata={"group": ROUTING, "help": "seconds a tokenizer call may take"}
    )
    max_attempts: int = field(
        default=3, metadata={"group": ROUTING, "help": "engines tried for one request before its first token"}
    )
    engine_stream: Literal["multiplex", "generate"] = field(
        default="multiplex",
        metadata={
            "group": ROUTING,
            "help": "how requests reach an engine: multiplex (one stream per engine carries every request's "
            "tokens, one message per engine step) or generate (a Generate call per request)",
        },
    )
    drain_grace_s: float = field(
        default=600.0,
        metadata={"group": ROUTING, "help": "seconds streams keep running on an engine discovery dropped"},
    )

    # Security and observability.
    api_keys: tuple[str, ...] = field(
        default=(),
        metadata={
            "flag": "api-key",
            "group": SECURITY,
            "help": "accepted API key (repeatable; visible to other users in `ps`: prefer --api-key-file or "
            "the PAGODA_API_KEY environment variable)",
        },
    )
    api_key_file: str | None = field(
        default=None,
        metadata={"group": SECURITY, "help": "file with one API key per line, re-read when it changes"},
    )
    metrics: bool = field(default=True, metadata={"group": SECURITY, "help": "serve /metrics"})
    # Engines' /metrics URLs whose families /metrics appends, labelled by engine (upstream/engine_metrics.py).
    engine_metrics_urls: tuple[str, ...] = field(
        default=(),
        metadata={
            "flag": "engine-metrics-url",
            "metavar": "URL",
            "group": SECURITY,
            "help": "an engine's /metrics URL whose metrics /metrics appends, labelled by engine "
            "(repeatable; pagoda serve passes its engines')",
        },
    )
    log_format: Literal["text", "json"] = field(
        default="text", metadata={"group": SECURITY, "help": "log line format"}
    )
    log_requests: bool = field(
        default=True,
        metadata={"group": SECURITY, "help": "log one line per request: id, model, status, tokens, timings"},
    )
    log_prompts: bool = field(
        default=False,
        metadata={"group": SECURITY, "help": "put the messages / prompt in that line (off: never logged)"},
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata={
            "group": SECURITY,
            "help": "export traces over OTLP/gRPC, e.g. http://otel-collector:4317 "
            "(default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off)",
        },
    )
    salt_cache_per_api_key: bool = field(
        default=False,
        metadata={
            "group": SECURITY,
            "help": "salt each API key's prefix cache apart, so that no key can probe another's cached "
            "prompts",
        },
    )

    # TLS: HTTPS for clients; TLS (mutual with a client certificate) to the engines and the tokenizer.
    tls_cert: str | None = field(
        default=None,
        metadata={"group": TLS, "help": "serve HTTPS with this PEM certificate chain (with --tls-key)"},
    )
    tls_key: str | None = field(
        default=None, metadata={"group": TLS, "help": "the PEM private key of --tls-cert"}
    )
    grpc_tls_ca: str | None = field(
        default=None,
        metadata={"group": TLS, "help": "reach engines and the tokenizer over TLS, trusting this PEM CA"},
    )
    grpc_tls_cert: str | None = field(
        default=None,
        metadata={"group": TLS, "help": "client certificate for mutual TLS to engines and tokenizer"},
    )
    grpc_tls_key: str | None = field(
        default=None, metadata={"group": TLS, "help": "the PEM private key of --grpc-tls-cert"}
    )
    grpc_tls_server_name: str | None = field(
        default=None,
        metadata={
            "group": TLS,
            "help": "the name expected in engine and tokenizer certificates (default: the address dialled; "
            "set it when engines are found by IP)",
        },
    )
    grpc_token_file: str | None = field(
        default=None,
        metadata={
            "group": TLS,
            "help": "send `authorization: Bearer TOKEN` to engines and the tokenizer, TOKEN being the file's "
            "first line (the services' own --grpc-token-file)",
        },
    )
    tls_reload_interval_s: float = field(
        default=5.0,
        metadata={
            "group": TLS,
            "help": "seconds between checks of the --grpc-tls-* files for a renewal (new connections use it)",
        },
    )

    # Keepalive pings to engines and tokenizers (they accept them down to 5 s: pagoda/grpc_keepalive.py).
    grpc_keepalive_time_s: float = field(
        default=10.0,
        metadata={
            "group": ROUTING,
            "help": "seconds between keepalive pings to engines and tokenizers (they accept >= 5 s)",
        },
    )

    # Connections: past max_connections (None: as many as the descriptor limit allows, see
    # http_server.py) a new connection gets a 503; a connection idle, or still sending its request's
    # headers, for idle_timeout_s is closed; a body that takes longer than body_timeout_s is a 408.
    max_connections: int | None = field(
        default=None,
        metadata={
            "group": CONNECTIONS,
            "help": "open client connections; more get a 503 (default: what the descriptor limit allows)",
        },
    )
    idle_timeout_s: float = field(
        default=30.0,
        metadata={
            "group": CONNECTIONS,
            "help": "seconds before closing a connection that is idle or has not sent its request's headers",
        },
    )
    body_timeout_s: float = field(
        default=60.0,
        metadata={"group": CONNECTIONS, "help": "seconds a request body may take to arrive (408)"},
    )
    body_parse_workers: int = field(
        default=1,
        metadata={
            "group": CONNECTIONS,
            "help": "processes that parse request bodies over 256 KiB, off the event loop",
        },
    )

    # Limits (None: none beyond the model's context).
    max_body_bytes: int = field(
        default=64 * 1024 * 1024, metadata={"group": LIMITS, "help": "larger request bodies get a 413"}
    )
    max_prompt_tokens: int | None = field(
        default=None, metadata={"group": LIMITS, "help": "longer prompts get a 400"}
    )
    max_tokens_limit: int | None = field(
        default=None,
        metadata={"group": LIMITS, "help": "a larger max_tokens gets a 400; the cap when none is given"},
    )
    max_concurrent_streams_per_key: int | None = field(
        default=None,
        metadata={
            "group": LIMITS,
            "help": "sequences (prompts x n) in flight per API key (all callers share one budget without "
            "keys); more get a 429 with Retry-After",
        },
    )
    max_concurrent_tokens_per_key: int | None = field(
        default=None,
        metadata={
            "group": LIMITS,
            "help": "tokens in flight per API key (a sequence counts its prompt and max_tokens); more: 429",
        },
    )
    max_sequences_per_request: int = field(
        default=256, metadata={"group": LIMITS, "help": "prompts x n in one request; more get a 400"}
    )
    max_response_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "group": LIMITS,
            "help": "a non-streaming answer larger than this is a 400 (ask for less, or stream it)",
        },
    )
    trust_request_chat_template: bool = field(
        default=False,
        metadata={
            "group": LIMITS,
            "help": "accept a request's own `chat_template` (the tokenizer service must allow it too); "
            "without it such a request is a 400",
        },
    )

    # Model output: the tool-call format (auto: read from the chat template; hermes, llama3_json, mistral)
    # and the reasoning parser (None, qwen3, deepseek_r1) of the served model. Their choices are the parser
    # registries' (router/api/tool_parsers, router/api/reasoning.py), given to the flags by router/main.py.
    tool_call_parser: str = field(
        default="auto",
        metadata={
            "group": MODEL_OUTPUT,
            "help": "the model's tool-call format (auto: read from its chat template)",
        },
    )
    reasoning_parser: str | None = field(
        default=None,
        metadata={
            "group": MODEL_OUTPUT,
            "help": "split a thinking model's <think> reasoning into reasoning_content (default: off)",
        },
    )

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or self.api_key_file is not None
