"""The service's failures and the one place that maps them (and bad input) to gRPC status codes.

Bad input raises ValueError naming the field (SamplingParams.validate, Engine.validate, convert.py);
the front raises the errors below. `grpc_errors` wraps every servicer method, so no exception reaches
grpc as UNKNOWN and none reaches the engine loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc

from engine_service.engine.errors import EngineDeadError, EngineOverloadedError, EngineUnavailableError

log = logging.getLogger(__name__)


STATUS_CODES: dict[type[BaseException], grpc.StatusCode] = {
    ValueError: grpc.StatusCode.INVALID_ARGUMENT,
    EngineOverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    EngineUnavailableError: grpc.StatusCode.UNAVAILABLE,
    EngineDeadError: grpc.StatusCode.INTERNAL,
}


def status_code(error: BaseException) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


def grpc_errors(method):
    """Turns a servicer coroutine's exceptions into gRPC statuses (unexpected ones: INTERNAL, logged)."""

    @functools.wraps(method)
    async def wrapper(self, request, context: grpc.aio.ServicerContext):
        try:
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as e:
            code, message = status_code(e), str(e)
            if code is grpc.StatusCode.INTERNAL and not isinstance(e, EngineDeadError):  # a bug: say so
                log.exception("%s failed", method.__name__)
                message = f"internal error: {type(e).__name__}: {e}"
            await context.abort(code, message)

    return wrapper
