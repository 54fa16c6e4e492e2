"""`Multiplex`: many generations over one bidirectional stream, what a router sends its requests over.

    caller ── {handle, generate} ──▶ reader ──▶ one task per generation: telemetry, checks, add_request
           ── {handle, cancel}   ──▶ reader ──▶ that task is cancelled (its request aborted)
    caller ◀── {[handle, GenerateResponse | error], ...} ── writer ◀── ready(stream), from the engine's steps

Per-request `Generate` streams cost a gRPC message, a task wake-up and a write per request per step on
both ends, the router's and the engine front's: at 256 streams and a step every few milliseconds that is
tens of thousands of messages a second, more than one Python process sends, so messages coalesced many
steps (issue 23: ~22 tokens per event). Here the writer wakes once per engine step that produced
something, takes what every ready stream holds (one merged message per sample: RequestStream.take) into
one MultiplexResponse, and writes it. While a write waits on the stream's flow control (the caller reads
slowly), later steps' deltas stay in their streams and leave merged in the next response: only what the
caller has not yet read is coalesced.

A generation keeps Generate's contract message for message: the same GenerateResponses, the same status
codes (as `error_code`, ending the generation), the same telemetry (one task per generation holds its log
line and span, idle while it streams).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import grpc

from engine_service.engine.async_engine import RequestStream
from engine_service.engine.errors import EngineDeadError
from engine_service.server import convert
from engine_service.server.errors import status_code
from engine_service.server.request_telemetry import RequestTelemetry
from engine_service.server.serving_state import ServingState
from pagoda.engine.v1 import engine_pb2 as pb
from pagoda.grpc_auth import caller_identity

log = logging.getLogger(__name__)


class _Generation:
    """One handle's generation: its task, and once accepted, its stream."""

    __slots__ = ("handle", "task", "stream", "sent_last")

    def __init__(self, handle: int):
        self.handle = handle
        self.task: asyncio.Task | None = None
        self.stream: RequestStream | None = None
        self.sent_last: asyncio.Future | None = None  # the writer sent its last message (or it failed)


class MultiplexCall:
    """One Multiplex call on the engine's side; the outlet of every stream started on it."""

    def __init__(self, state: ServingState, telemetry: RequestTelemetry, prompt_of):
        self._state = state
        self._telemetry = telemetry
        self._prompt_of = prompt_of  # async (GenerateRequest, AsyncEngine) -> prompt token ids
        self._generations: dict[int, _Generation] = {}
        self._ready: dict[RequestStream, None] = {}  # streams with output to send, in order (a set)
        self._errors: list[pb.MultiplexedMessage] = []  # generations that failed, to tell the caller
        self._wake = asyncio.Event()
        self._owner: str | None = None  # the caller (pagoda/grpc_auth.py): its Abort alone ends these

    # ---- the outlet --------------------------------------------------------------------------------
    def ready(self, stream: RequestStream) -> None:
        self._ready[stream] = None
        self._wake.set()

    # ---- the call ----------------------------------------------------------------------------------
    async def serve(self, requests: AsyncIterator[pb.MultiplexRequest], context) -> None:
        """Until the caller has closed its side and every generation ended (or the call is cancelled)."""
        self._owner = caller_identity(context)
        reader = asyncio.create_task(self._read(requests), name="multiplex-reader")
        reader.add_done_callback(lambda _: self._wake.set())
        try:
            await self._write_loop(context, reader)
        finally:
            reader.cancel()
            tasks = [g.task for g in self._generations.values() if g.task is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)

    async def _read(self, requests: AsyncIterator[pb.MultiplexRequest]) -> None:
        async for request in requests:
            which = request.WhichOneof("action")
            if which == "generate":
                self._start(request)
            elif which == "cancel":
                generation = self._generations.get(request.handle)
                if generation is not None and generation.task is not None:
                    generation.task.cancel()
            else:
                self._fail(request.handle, ValueError("action is required: set generate or cancel"))

    def _start(self, request: pb.MultiplexRequest) -> None:
        handle = request.handle
        if handle in self._generations:
            self._fail(handle, ValueError(f"handle {handle} is in use by a live generation"))
            return
        generation = self._generations[handle] = _Generation(handle)
        generation.task = asyncio.create_task(self._generate(generation, request), name=f"multiplex-{handle}")

    async def _generate(self, generation: _Generation, request: pb.MultiplexRequest) -> None:
        """Generate's body for one handle: the stream is read by the writer; this waits for its end."""
        gen = request.generate
        request_id = gen.request_id or uuid.uuid4().hex
        engine = None
        done = False  # the last message was sent
        try:
            with self._telemetry.generate(request_id, list(request.metadata.items())) as call:
                engine = self._state.accepting()
                convert.check_generates(engine.model_info)
                convert.check_request_id(request_id)
                params = convert.sampling_params_from_pb(gen.sampling_params)
                prompt = await self._prompt_of(gen, engine)
                generation.sent_last = asyncio.get_running_loop().create_future()
                stream = engine.add_request(
                    request_id, prompt, params, gen.cache_salt or None, outlet=self, owner=self._owner
                )
                stream.tag = generation
                generation.stream = call.stream = stream
                await generation.sent_last
                done = True
        except asyncio.CancelledError:
            pass  # cancelled by the caller, or the call ended: the telemetry said CANCELLED
        except Exception as err:  # noqa: BLE001 (every failure is the generation's status, as Generate's)
            self._fail(generation.handle, err)
        finally:
            if engine is not None and generation.stream is not None and not done:
                engine.abort(request_id)
            self._generations.pop(generation.handle, None)
            self._wake.set()  # the writer may be waiting for the last generation to end

    def _fail(self, handle: int, error: BaseException) -> None:
        code, message = status_code(error), str(error)
        if code is grpc.StatusCode.INTERNAL and not isinstance(error, EngineDeadError):  # a bug: say so
            log.error("Multiplex generation failed", exc_info=error)
            message = f"internal error: {type(error).__name__}: {error}"
        self._errors.append(
            pb.MultiplexedMessage(handle=handle, error_code=code.value[0], error_message=message)
        )
        self._wake.set()

    async def _write_loop(self, context, reader: asyncio.Task) -> None:
        texts = self._state.token_texts
        while True:
            await self._wake.wait()
            self._wake.clear()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # an undecodable request: the call fails INVALID_ARGUMENT
            response, sent_last = self._collect(texts)
            if response.messages:
                await context.write(response)
            for generation in sent_last:
                if not generation.sent_last.done():
                    generation.sent_last.set_result(None)
            if reader.done() and not self._generations and not self._ready and not self._errors:
                return  # the caller closed its side and every generation has ended

    def _collect(self, texts) -> tuple[pb.MultiplexResponse, list[_Generation]]:
        """One response with what every ready stream holds; the generations whose last message it has."""
        ready, self._ready = self._ready, {}
        errors, self._errors = self._errors, []
        response = pb.MultiplexResponse()
        add = response.messages.add
        sent_last = []
        for stream in ready:
            generation = stream.tag
            if generation is None or self._generations.get(generation.handle) is not generation:
                continue  # cancelled: its abort's message goes nowhere
            try:
                deltas = stream.take()
            except Exception as err:  # noqa: BLE001 (the engine died, or refused the request late)
                if not generation.sent_last.done():
                    generation.sent_last.set_exception(err)
                continue
            for delta in deltas:
                convert.fill_response(add(handle=generation.handle).response, delta, texts)
            if stream.finished and deltas and deltas[-1].usage is not None:
                sent_last.append(generation)
        response.messages.extend(errors)
        return response, sent_last
