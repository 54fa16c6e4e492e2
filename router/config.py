"""The router's one configuration object, built once from flags in `main()` and passed down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RouterConfig:
    host: str = "0.0.0.0"
    port: int = 8000
    # The tokenizer service (a host:port; any gRPC target such as dns:///name:port works too).
    tokenizer: str = "127.0.0.1:50052"

    # Engine discovery: any mix of a static list, DNS names and Kubernetes EndpointSlices.
    engines: tuple[str, ...] = ()
    engine_dns: tuple[str, ...] = ()  # NAME:PORT, re-resolved every dns_interval_s
    dns_interval_s: float = 5.0
    k8s_namespace: str | None = None
    k8s_service: str | None = None
    k8s_label_selector: str | None = None
    k8s_engine_port: int = 50051
    k8s_resync_s: float = 300.0
    kubeconfig: str | None = None  # None: in-cluster config when running in a pod, else ~/.kube/config

    # Picking an engine.
    policy: str = "prefix_affinity"
    session_header: str = "x-session-id"
    affinity_blocks: int = 8  # how many leading full KV blocks of the prompt key prefix affinity
    affinity_load_factor: float = 1.25  # an engine above factor * mean load + 1 is skipped

    # Health and timeouts.
    health_interval_s: float = 1.0
    probe_timeout_s: float = 2.0
    probe_failures_to_eject: int = 2
    max_backoff_s: float = 10.0
    connect_timeout_s: float = 5.0
    first_token_timeout_s: float = 120.0
    tokenizer_timeout_s: float = 30.0
    max_attempts: int = 3  # engines tried for one request before its first token
    drain_grace_s: float = 600.0  # how long streams keep running on an engine discovery dropped

    # Security and observability.
    api_keys: tuple[str, ...] = ()
    api_key_file: str | None = None
    metrics: bool = True
    # Engines' /metrics URLs whose families /metrics appends, labelled by engine (pagoda serve passes its
    # engines'; upstream/engine_metrics.py). Empty: the router's own metrics only.
    engine_metrics_urls: tuple[str, ...] = ()
    log_format: str = "text"
    log_requests: bool = True  # one line per request (router.requests)
    log_prompts: bool = False  # ... with its messages / prompt (off: prompts never reach the logs)
    otlp_endpoint: str | None = None  # OTLP/gRPC traces (from --otlp-endpoint or OTEL_EXPORTER_OTLP_*)
    salt_cache_per_api_key: bool = False  # no two API keys share prefix-cache blocks

    # TLS: HTTPS for clients; TLS (mutual with a client certificate) to the engines and the tokenizer.
    tls_cert: str | None = None
    tls_key: str | None = None
    grpc_tls_ca: str | None = None
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_server_name: str | None = None  # the name in server certificates, when not the dialled address

    # Limits (None: none beyond the model's context).
    max_body_bytes: int = 64 * 1024 * 1024
    max_prompt_tokens: int | None = None
    max_tokens_limit: int | None = None
    max_concurrent_streams_per_key: int | None = None

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys) or self.api_key_file is not None

    def channel_tls(self):
        """The router's side of TLS to engines and tokenizer, or None for plaintext."""
        from pagoda.tls import ChannelTls

        if self.grpc_tls_ca is None:
            return None
        return ChannelTls(self.grpc_tls_ca, self.grpc_tls_cert, self.grpc_tls_key, self.grpc_tls_server_name)
