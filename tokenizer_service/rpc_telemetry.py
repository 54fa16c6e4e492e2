"""One tokenizer RPC as logs and traces see it: the caller's request id (`x-request-id` metadata) in every
line logged while it runs, one line when it ends, and a SERVER span under the caller's trace context.

    call = telemetry.begin("Encode", context.invocation_metadata())
    ...
    call.end(status_code, error_message, num_tokens)

No text (prompt or output) is ever logged.
"""

from __future__ import annotations

import logging
import time

import grpc

from pagoda.telemetry.logging import (
    fields,
    request_id_from_metadata,
    reset_request_context,
    set_request_context,
)
from pagoda.telemetry.tracing import Tracing

log = logging.getLogger("tokenizer_service.requests")


class RpcTelemetry:
    def __init__(self, tracing: Tracing | None = None, log_requests: bool = True):
        self.tracing = tracing
        self.log_requests = log_requests

    def begin(self, rpc: str, metadata) -> RpcCall:
        return RpcCall(self, rpc, metadata)


class RpcCall:
    __slots__ = ("_t", "rpc", "_span", "_token", "_started")

    def __init__(self, telemetry: RpcTelemetry, rpc: str, metadata):
        self._t, self.rpc = telemetry, rpc
        self._started = time.monotonic()
        tracing, self._span = telemetry.tracing, None
        if tracing is not None:
            self._span = tracing.start_grpc_server_span(
                f"TokenizerService/{rpc}",
                metadata,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.service": "pagoda.tokenizer.v1.TokenizerService",
                    "rpc.method": rpc,
                },
            )
        trace_id = tracing.trace_id(self._span) if self._span is not None else None
        self._token = set_request_context(request_id_from_metadata(metadata), trace_id)

    def end(self, code: grpc.StatusCode, error: str, num_tokens: int | None) -> None:
        try:
            if self._t.log_requests:
                log.info(
                    f"{self.rpc} {code.name}",
                    extra=fields(
                        rpc=self.rpc,
                        status=code.name,
                        error=error or None,
                        tokens=num_tokens,
                        duration_ms=round((time.monotonic() - self._started) * 1e3, 2),
                    ),
                )
            if self._span is not None:
                if num_tokens is not None:
                    self._span.set_attribute("pagoda.num_tokens", num_tokens)
                self._span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code not in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
                    self._t.tracing.fail(self._span, f"{code.name}: {error}")
                self._span.end()
        finally:
            reset_request_context(self._token)
