"""Errors in OpenAI's format, and the one place where gRPC status codes become HTTP statuses.

Every failure a client can see is an `OpenAIError`: handlers raise it, the error middleware renders it as
`{"error": {"message", "type", "param", "code"}}`, and a stream that already started sends its body as the
last SSE event.
"""

from __future__ import annotations

import json

import grpc
from aiohttp import web


class OpenAIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: int | None = None,
        close_connection: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        self.close_connection = close_connection  # e.g. a body left unread: do not keep the connection

    def __reduce__(self):
        # Crosses from the body pool's process (body_pool.py): keyword arguments survive pickling.
        return _rebuild, (self.status, self.message, self.__dict__)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> web.Response:
        headers = {"Retry-After": str(self.retry_after_s)} if self.retry_after_s is not None else None
        response = web.Response(
            status=self.status, text=json.dumps(self.body()), content_type="application/json", headers=headers
        )
        if self.close_connection:
            response.force_close()
        return response


def _rebuild(status: int, message: str, state: dict) -> OpenAIError:
    error = OpenAIError(status, message)
    error.__dict__.update(state)
    return error


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unsupported(field: str, what: str = "") -> OpenAIError:
    return OpenAIError(400, f"'{field}'{what} is not supported yet by this server.", param=field)


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def no_engine(model: str | None = None) -> OpenAIError:
    what = f" for model `{model}`" if model else ""
    return OpenAIError(
        503, f"No engine is ready{what}; try again shortly.", type="server_error", code="service_unavailable"
    )


def overloaded(retry_after_s: int = 1) -> OpenAIError:
    return OpenAIError(
        429,
        "The engines are at capacity; retry after a short wait.",
        type="rate_limit_error",
        code="rate_limit_exceeded",
        retry_after_s=retry_after_s,
    )


# gRPC status -> (HTTP status, OpenAI error type, OpenAI code).
_FROM_GRPC: dict[grpc.StatusCode, tuple[int, str, str | None]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", None),
    grpc.StatusCode.OUT_OF_RANGE: (400, "invalid_request_error", None),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", None),
    grpc.StatusCode.NOT_FOUND: (404, "invalid_request_error", None),
    grpc.StatusCode.UNAUTHENTICATED: (401, "invalid_request_error", "invalid_api_key"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "invalid_request_error", None),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "rate_limit_exceeded"),
    grpc.StatusCode.UNAVAILABLE: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.CANCELLED: (503, "server_error", "service_unavailable"),
    grpc.StatusCode.ABORTED: (503, "server_error", "service_unavailable"),
}

# Failures that say nothing about the request itself: another engine may well succeed.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)

# Failures that say the engine itself is unreachable or broken: eject it until a probe succeeds.
ENGINE_DOWN = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def from_grpc(err: grpc.aio.AioRpcError, service: str) -> OpenAIError:
    """Turns a failed gRPC call to `service` ("engine", "tokenizer") into the client's error."""
    code = err.code()
    status, type_, oai_code = _FROM_GRPC.get(code, (500, "server_error", None))
    details = err.details() or code.name
    if status == 429:
        return overloaded()
    if code is grpc.StatusCode.UNAVAILABLE:
        message = f"The {service} failed: it is unavailable ({details}); try again shortly."
    elif status >= 500:
        message = f"The {service} failed: {details}"
    else:
        message = details
    return OpenAIError(status, message, type=type_, code=oai_code)
