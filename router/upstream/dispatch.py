"""Sending one prompt to an engine: pick, start the generation, retry elsewhere until the first message
arrives.

Before the first message nothing has reached the client, so any engine-side failure (unreachable, timed
out, pushed back, crashed) is retried on another engine, at most `max_attempts` engines in all. After it,
a failure ends the stream: the handler turns `EngineStreamError` into an error event.

A generation goes over the engine's multiplexed stream (multiplex.py: one call per engine for every
request, one message per engine step), or with `multiplex=False` over a `Generate` call of its own, the
way an engine without `Multiplex` (UNIMPLEMENTED: an older version) is served too. Both give the same
messages and the same errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from pagoda.engine.v1 import engine_pb2
from router import request_telemetry
from router.errors import ENGINE_DOWN, RETRYABLE, OpenAIError, from_grpc, no_engine, overloaded
from router.metrics import RouterMetrics
from router.upstream.engines import Engine, EngineRegistry
from router.upstream.model_card import ModelCard
from router.upstream.multiplex import Sink
from router.upstream.policies import Policy, RouteRequest

log = logging.getLogger(__name__)

_READY = grpc.ChannelConnectivity.READY
_STOPPED_RESPONDING = OpenAIError(503, "The engine stopped responding.", type="server_error")


class EngineStreamError(Exception):
    """The engine failed after the first message; carries the error to show the client."""

    def __init__(self, error: OpenAIError):
        super().__init__(error.message)
        self.error = error


class _Retry(Exception):
    def __init__(self, error: OpenAIError, pushed_back: bool):
        self.error = error
        self.pushed_back = pushed_back


class EngineStream:
    """One generation on one engine; counts as the engine's outstanding request until `close()`."""

    def __init__(
        self,
        engine: Engine,
        registry: EngineRegistry,
        request: engine_pb2.GenerateRequest,
        multiplex: bool = True,
    ):
        self.engine = engine
        self._registry = registry
        self._request = request
        self._multiplex = multiplex and not engine.multiplexer.unsupported
        self._call = None  # the Generate call, or
        self._sink: Sink | None = None  # the generation on the engine's multiplexed stream
        self._pending: list[engine_pb2.GenerateResponse] = []  # taken from the sink, not yet read
        self._first: engine_pb2.GenerateResponse | None = None
        self._abandoned = False
        self._closed = False
        self._error: str | None = None  # why the stream failed, for its trace span
        metadata, self._span = request_telemetry.outgoing("EngineService/Generate", engine.address)
        self._metadata = (*metadata, *engine.metadata)
        engine.num_outstanding += 1
        engine.streams.add(self)

    async def start(self, connect_timeout_s: float, first_token_timeout_s: float) -> None:
        """Waits for the first message; raises `_Retry` for failures another engine may not have."""
        engine = self.engine
        try:
            if engine.channel.get_state(try_to_connect=True) is not _READY:
                async with asyncio.timeout(connect_timeout_s):
                    await engine.channel.channel_ready()
            if self._abandoned:
                raise EngineStreamError(_STOPPED_RESPONDING)
            async with asyncio.timeout(first_token_timeout_s):
                first = await self._open()
        except TimeoutError:
            # Slow is not dead: the engine may be busy with a long queue, and its probes say whether it
            # is alive. Try another engine, but leave this one in service.
            error = OpenAIError(503, "The engine did not answer in time.", type="server_error")
            raise _Retry(error, pushed_back=False) from None
        except EngineStreamError as err:  # abandoned: the engine stopped answering probes meanwhile
            raise _Retry(err.error, pushed_back=False) from None
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code in ENGINE_DOWN:
                self._registry.request_failed(engine, f"{code.name}: {err.details()}")
            if code not in RETRYABLE:
                raise from_grpc(err, "engine") from None
            raise _Retry(
                from_grpc(err, "engine"), pushed_back=code is grpc.StatusCode.RESOURCE_EXHAUSTED
            ) from None
        if first is grpc.aio.EOF:
            raise _Retry(
                OpenAIError(503, "The engine ended the stream without output.", type="server_error"), False
            )
        self._first = first

    @property
    def first(self) -> engine_pb2.GenerateResponse | None:
        """The first message, until iteration takes it: what a handler needs before streaming (the
        prompt logprobs ride on it)."""
        return self._first

    async def __aiter__(self) -> AsyncIterator[engine_pb2.GenerateResponse]:
        first, self._first = self._first, None
        yield first
        try:
            while (msg := await self._read()) is not grpc.aio.EOF:
                yield msg
        except grpc.aio.AioRpcError as err:
            self._error = f"{err.code().name}: {err.details()}"
            if err.code() in ENGINE_DOWN:
                self._registry.request_failed(self.engine, self._error)
            raise EngineStreamError(from_grpc(err, "engine")) from None

    async def _open(self):
        """Starts the generation and returns its first message (or EOF)."""
        if self._multiplex:
            self._sink = self.engine.multiplexer.open(self._request, self._metadata)
            try:
                return await self._read()
            except grpc.aio.AioRpcError as err:
                if err.code() is not grpc.StatusCode.UNIMPLEMENTED:
                    raise
                self.engine.multiplexer.unsupported = True  # an older engine: Generate from now on
                log.warning("engine %s has no Multiplex: one Generate call per request", self.engine.address)
                self._sink = None
        self._call = self.engine.stub.Generate(self._request, metadata=self._metadata)
        return await self._read()

    async def _read(self):
        if self._sink is not None:
            return await self._read_sink()
        try:
            return await self._call.read()
        except asyncio.CancelledError:
            # grpc raises CancelledError for a locally cancelled call: when `abandon()` did that, the
            # engine is gone, not our caller.
            if self._abandoned and asyncio.current_task().cancelling() == 0:
                raise EngineStreamError(_STOPPED_RESPONDING) from None
            raise

    async def _read_sink(self):
        if not self._pending:
            try:
                self._pending = await self._sink.get()
            except grpc.aio.AioRpcError:
                if self._abandoned:  # the multiplexed call was ended because the engine hung
                    raise EngineStreamError(_STOPPED_RESPONDING) from None
                raise
            if not self._pending:
                return grpc.aio.EOF
            self._pending.reverse()  # popped from the end, in order
        return self._pending.pop()

    def abandon(self) -> None:
        """The engine stopped answering health probes: end this stream instead of waiting forever."""
        self._abandoned = True
        if self._call is not None:
            self._call.cancel()
        if self._sink is not None:
            self.engine.multiplexer.abandon()  # every generation on it ends (the engine is hung)

    def close(self, error: str | None = None) -> None:
        """Ends the generation (`error`: why it failed, for its trace span)."""
        if self._closed:
            return
        self._closed = True
        if self._call is not None:
            self._call.cancel()  # a no-op once finished; aborts the request on the engine otherwise
        if self._sink is not None:
            self.engine.multiplexer.cancel(self._sink)  # likewise
        self.engine.num_outstanding -= 1
        self.engine.streams.discard(self)
        if self._span is not None:
            self._span.end(error or self._error)


class Dispatcher:
    def __init__(
        self,
        registry: EngineRegistry,
        policy: Policy,
        metrics: RouterMetrics,
        *,
        max_attempts: int,
        connect_timeout_s: float,
        first_token_timeout_s: float,
        multiplex: bool = True,
    ):
        self.multiplex = multiplex  # generations over each engine's Multiplex stream, else Generate calls
        self.registry = registry
        self.policy = policy
        self.metrics = metrics
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self.first_token_timeout_s = first_token_timeout_s

    async def open(
        self, card: ModelCard, request: engine_pb2.GenerateRequest, session_key: str | None = None
    ) -> EngineStream:
        """An engine stream whose first message has arrived; the caller must `close()` it."""
        route = RouteRequest(request.prompt_token_ids.ids, card.block_size, session_key, request.cache_salt)
        tel = request_telemetry.current()
        retries = self.metrics.engine_retries.labels(card.name)  # exists at 0, so that rate() sees it
        tried: set[str] = set()
        errors: list[_Retry] = []
        for _ in range(self.max_attempts):
            candidates = [e for e in self.registry.ready_for(card.name) if e.address not in tried]
            if not candidates:
                break
            engine = await self.policy.pick(candidates, route)
            self.metrics.engine_picks.labels(engine.address, self.policy.name).inc()
            tried.add(engine.address)
            stream = EngineStream(engine, self.registry, request, self.multiplex)
            if tel is not None:
                tel.engine = engine.address
            try:
                await stream.start(self.connect_timeout_s, self.first_token_timeout_s)
            except _Retry as retry:
                stream.close(retry.error.message)
                errors.append(retry)
                retries.inc()
                if tel is not None:
                    tel.retried(engine.address, retry.error.message)
                log.warning(
                    "request %s failed on %s before its first token: %s",
                    request.request_id,
                    engine.address,
                    retry.error.message,
                )
                continue
            except BaseException as e:
                stream.close(f"{type(e).__name__}: {e}")
                raise
            self.metrics.engine_requests.labels(engine.address).inc()
            return stream
        if not errors:
            raise no_engine(card.name)
        if all(e.pushed_back for e in errors):
            raise overloaded()
        raise errors[-1].error

    async def embed(self, card: ModelCard, request: engine_pb2.EmbedRequest) -> engine_pb2.EmbedResponse:
        """One `Embed` call, on engines serving `card` picked by the policy; retried elsewhere (at most
        `max_attempts` engines) on failures another engine may not have."""
        route = RouteRequest((), card.block_size, None)
        errors: list[OpenAIError] = []
        pushed_back = True
        tried: set[str] = set()
        for _ in range(self.max_attempts):
            candidates = [e for e in self.registry.ready_for(card.name) if e.address not in tried]
            if not candidates:
                break
            engine = await self.policy.pick(candidates, route)
            tried.add(engine.address)
            metadata, span = request_telemetry.outgoing("EngineService/Embed", engine.address)
            engine.num_outstanding += 1
            error = None
            try:
                return await engine.stub.Embed(request, metadata=metadata, timeout=self.first_token_timeout_s)
            except grpc.aio.AioRpcError as err:
                code = err.code()
                error = f"{code.name}: {err.details()}"
                if code in ENGINE_DOWN:
                    self.registry.request_failed(engine, error)
                if code not in RETRYABLE:
                    raise from_grpc(err, "engine") from None
                errors.append(from_grpc(err, "engine"))
                pushed_back &= code is grpc.StatusCode.RESOURCE_EXHAUSTED
            finally:
                engine.num_outstanding -= 1
                if span is not None:
                    span.end(error)
        if not errors:
            raise no_engine(card.name)
        if pushed_back:
            raise overloaded()
        raise errors[-1]
