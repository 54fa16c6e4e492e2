"""EngineServiceConfig: the engine service's one frozen configuration, built once from flags in main()."""

from __future__ import annotations

from dataclasses import dataclass

from engine_service.core.config import EngineConfig
from pagoda.tls import ServerTls


@dataclass(frozen=True)
class EngineServiceConfig:
    engine: EngineConfig
    host: str = "127.0.0.1"  # loopback unless told: the chart passes --host 0.0.0.0
    port: int = 50051  # 0: any free port
    metrics_port: int = 9100  # 0: no metrics server
    max_waiting: int = 1024  # accepted sequences with no output yet; past it, RESOURCE_EXHAUSTED
    shutdown_grace_period_s: float = 30.0  # SIGTERM: how long in-flight requests may take to finish
    stream_interval: int = 1  # tokens a stream collects before it is sent (first token and finishes: at once)
    engine_core: str = "process"  # process | thread: where the engine loop runs (engine_loop.py)
    step_timeout_s: float = 300.0  # one engine step longer than this means the loop is stuck
    # The engine process's heartbeat silent this long: it is frozen (health NOT_SERVING, streams end
    # UNAVAILABLE) until it beats again. Steps may take minutes; the heartbeat never stops for one.
    liveness_timeout_s: float = 5.0
    log_format: str = "text"  # text | json
    log_requests: bool = True  # one line per Generate call (engine_service.requests)
    log_stats_interval_s: float = 5.0  # the periodic throughput / queue / KV line; 0: none
    otlp_endpoint: str | None = None  # OTLP/gRPC traces (from --otlp-endpoint or OTEL_EXPORTER_OTLP_*)
    tls: ServerTls | None = None  # None: plaintext gRPC
    # A plaintext port that serves only grpc.health.v1, for kubelet probes when gRPC is TLS; 0: none.
    health_port: int = 0
    # Callers must send `authorization: Bearer TOKEN` with a token of this file (pagoda/grpc_auth.py).
    grpc_token_file: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port < 65536, f"port must be in [0, 65535], got {self.port}"),
            (0 <= self.metrics_port < 65536, f"metrics_port must be in [0, 65535], got {self.metrics_port}"),
            (0 <= self.health_port < 65536, f"health_port must be in [0, 65535], got {self.health_port}"),
            (self.max_waiting >= 1, f"max_waiting must be >= 1, got {self.max_waiting}"),
            (
                self.shutdown_grace_period_s >= 0,
                f"shutdown_grace_period must be >= 0, got {self.shutdown_grace_period_s}",
            ),
            (self.stream_interval >= 1, f"stream_interval must be >= 1, got {self.stream_interval}"),
            (self.step_timeout_s > 0, f"step_timeout must be > 0, got {self.step_timeout_s}"),
            (self.liveness_timeout_s > 0, f"liveness_timeout must be > 0, got {self.liveness_timeout_s}"),
            (
                self.log_stats_interval_s >= 0,
                f"log_stats_interval must be >= 0, got {self.log_stats_interval_s}",
            ),
            (
                self.log_format in ("text", "json"),
                f"log_format must be text or json, got {self.log_format!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
