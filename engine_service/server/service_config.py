"""EngineServiceConfig: the engine service's one frozen configuration, built once from flags in main().

`pagoda engine` makes a flag of each field (pagoda/cli_args.py) from its type, default and help, beside
EngineConfig's: a new setting is a new field with `metadata={"help": ...}`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from engine_service.core.config import EngineConfig
from pagoda.grpc_keepalive import SERVER_MIN_PING_INTERVAL_S
from pagoda.tls import ServerTls


@dataclass(frozen=True)
class EngineServiceConfig:
    engine: EngineConfig = field(metadata={"cli": False})
    # Loopback unless told: the chart (and anyone serving other machines) passes --host 0.0.0.0.
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "address the gRPC server listens on (0.0.0.0: every interface)"},
    )
    port: int = field(default=50051, metadata={"help": "gRPC port (0: any free port)"})
    metrics_port: int = field(default=9100, metadata={"help": "Prometheus /metrics port (0: off)"})
    max_waiting: int = field(
        default=1024,
        metadata={
            "help": "accepted sequences (requests x n) with no output yet; past it, RESOURCE_EXHAUSTED"
        },
    )
    shutdown_grace_period_s: float = field(
        default=30.0, metadata={"help": "seconds in-flight requests get to finish after SIGTERM"}
    )
    stream_interval: int = field(
        default=1,
        metadata={
            "help": "tokens a stream collects before a message is sent (the first token and finishes go at "
            "once)"
        },
    )
    engine_core: Literal["process", "thread"] = field(
        default="process",
        metadata={
            "help": "run the engine loop in a process of its own (default: streaming never takes the GIL "
            "from the GPU loop) or in a thread of the gRPC process"
        },
    )
    step_timeout_s: float = field(
        default=300.0,
        metadata={"help": "an engine step running longer than this many seconds fails the engine (exit 1)"},
    )
    # The engine process's heartbeat silent this long: it is frozen (health NOT_SERVING, streams end
    # UNAVAILABLE) until it beats again. Steps may take minutes; the heartbeat never stops for one.
    liveness_timeout_s: float = field(
        default=5.0,
        metadata={
            "help": "the engine process silent this many seconds (stopped, swapped out, stuck) is frozen: "
            "health NOT_SERVING and its streams end UNAVAILABLE, until it responds again"
        },
    )
    log_format: Literal["text", "json"] = field(default="text", metadata={"help": "log line format"})
    log_requests: bool = field(
        default=True,
        metadata={
            "help": "log one line per request: ids, status, finish reason, token counts, timings (never the "
            "prompt)"
        },
    )
    log_stats_interval_s: float = field(
        default=5.0,
        metadata={
            "help": "seconds between the throughput / running / waiting / KV-usage log lines (0: none)"
        },
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata={
            "help": "export traces over OTLP/gRPC, e.g. http://otel-collector:4317 "
            "(default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off)"
        },
    )
    tls: ServerTls | None = field(default=None, metadata={"cli": False})  # None: plaintext gRPC (TLS flags)
    # A plaintext port that serves only grpc.health.v1, for kubelet probes when gRPC is TLS; 0: none. Its
    # flag is one of the TLS flags both gRPC services share (pagoda/tls.py).
    health_port: int = field(default=0, metadata={"cli": False})
    # Callers must send `authorization: Bearer TOKEN` with a token of this file (pagoda/grpc_auth.py).
    grpc_token_file: str | None = field(
        default=None,
        metadata={
            "help": "accept only callers with `authorization: Bearer TOKEN` for a token of this file (one a "
            "line); grpc.health.v1 stays open"
        },
    )
    # Clients' keepalive pings this far apart or more are accepted, calls or not (pagoda/grpc_keepalive.py).
    grpc_min_ping_interval_s: float = field(
        default=SERVER_MIN_PING_INTERVAL_S,
        metadata={
            "help": "accept clients' keepalive pings this many seconds apart or more, with or without calls "
            "in flight (the router pings every 10 s); closer pings close the connection (too_many_pings)"
        },
    )

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port < 65536, f"port must be in [0, 65535], got {self.port}"),
            (0 <= self.metrics_port < 65536, f"metrics_port must be in [0, 65535], got {self.metrics_port}"),
            (0 <= self.health_port < 65536, f"health_port must be in [0, 65535], got {self.health_port}"),
            (
                self.grpc_min_ping_interval_s > 0,
                f"grpc_min_ping_interval must be > 0, got {self.grpc_min_ping_interval_s}",
            ),
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
            (
                self.engine_core in ("process", "thread"),
                f"engine_core must be process or thread, got {self.engine_core!r}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
