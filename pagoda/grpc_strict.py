"""Registering a servicer so that a request whose bytes are not a valid message is refused with
INVALID_ARGUMENT, like any other bad request (grpc's own answer is UNKNOWN "Unexpected DecodeError").

    add_servicer(engine_pb2_grpc.add_EngineServiceServicer_to_server, servicer, server)

The generated `add_*_to_server` builds the method handlers; they are captured, each deserializer is made
lenient (an undecodable request becomes an `Undecodable` value), and each method refuses that value
before the servicer sees it.
"""

from __future__ import annotations

import inspect

import grpc
from google.protobuf.message import DecodeError


class Undecodable:
    def __init__(self, error: Exception):
        self.error = error


def add_servicer(add_to_server, servicer, server: grpc.aio.Server) -> None:
    capture = _Capture()
    add_to_server(servicer, capture)
    handlers = {name: _strict(handler) for name, handler in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


class _Capture:
    """Stands in for the server while the generated code registers its handlers."""

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
        self.service, self.handlers = service, handlers


def _strict(handler):
    lenient = _lenient(handler.request_deserializer)
    if handler.stream_stream is not None:  # each message of the request stream is checked as it comes
        guarded = _guard_requests(handler.stream_stream)
        return handler._replace(request_deserializer=lenient, stream_stream=guarded)
    kind = "unary_stream" if handler.unary_stream else "unary_unary"
    assert getattr(handler, kind) is not None, "only unary requests and bidirectional streams are guarded"
    return handler._replace(request_deserializer=lenient, **{kind: _guard(getattr(handler, kind))})


def _lenient(deserialize):
    def lenient(data: bytes):
        try:
            return deserialize(data)
        except DecodeError as error:
            return Undecodable(error)

    return lenient


def _refuse(request: Undecodable, context):
    return context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {request.error}"
    )


def _guard_requests(behavior):
    """A request-streaming method sees only decodable requests; an undecodable one raises ValueError in
    its reader (the servicer's error mapping makes that INVALID_ARGUMENT)."""

    async def checked(requests):
        async for request in requests:
            if isinstance(request, Undecodable):
                raise ValueError(f"the request is not a valid message: {request.error}")
            yield request

    async def guarded(requests, context):
        return await behavior(checked(requests), context)

    return guarded


def _guard(behavior):
    if inspect.isasyncgenfunction(behavior):

        async def guarded_stream(request, context):
            if isinstance(request, Undecodable):
                await _refuse(request, context)
            async for response in behavior(request, context):
                yield response

        return guarded_stream

    async def guarded(request, context):
        if isinstance(request, Undecodable):
            await _refuse(request, context)
        return await behavior(request, context)

    return guarded
