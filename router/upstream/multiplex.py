"""The router's end of an engine's `Multiplex` stream: one call per engine carries every generation the
router sends it.

    EngineStream.start ──open(request)──▶ Multiplexer ──{handle, generate}──▶ engine
    Sink.get() ◀── push(message) ◀── reader task ◀── {[handle, GenerateResponse | error]} one per engine step

The reader takes each response (what every generation produced in one engine step, or in several when
the router fell behind) and hands each message to its generation's Sink without waiting on anyone. A
handler woken for a sink takes everything queued there, merged into one message per sample: a handler
that falls behind (its client reads slowly, the event loop is busy) sends fewer, larger events, never a
backlog. A per-request Generate call would cost a gRPC read and a wake-up per request per step instead,
more than one process keeps up with at hundreds of streams (issue 23).

A failed generation's `error_code` becomes the AioRpcError its Generate call would have raised, so the
dispatcher treats both alike; when the call itself fails, every open sink gets its error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable

import grpc

from pagoda.engine.v1 import engine_pb2 as pb

log = logging.getLogger(__name__)

_CLOSE = object()  # ends the request stream: the call then ends once the engine finished every generation

# The engine channel's flow control, for the one stream that carries every generation. gRPC's default
# probes the bandwidth-delay product and widens the window to megabytes on a fast link, so a router that
# falls behind would leave seconds of tokens queued in its receive buffers, each generation's still sent
# one step at a time. A fixed 64 KiB window (some ten engine steps at 256 streams) stops the engine's
# writes instead, and what waits behind them leaves merged in the next message.
CHANNEL_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 64 * 1024)]


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Sink:
    """One generation's messages, as the reader hands them over; read by one consumer."""

    __slots__ = ("handle", "_messages", "_waiter", "_error", "done")

    def __init__(self, handle: int):
        self.handle = handle
        self._messages: list[pb.GenerateResponse] = []
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self.done = False  # the last message (with usage) arrived, or an error

    def push(self, message: pb.GenerateResponse) -> None:
        self._messages.append(message)
        if message.finish_reason and message.HasField("usage"):  # (usage comes with a sample's end)
            self.done = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
            self.done = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> list[pb.GenerateResponse]:
        """Everything queued, one merged message per sample (the one with usage last); [] once the
        generation ended. Raises the generation's error after its messages."""
        while not self._messages:
            if self._error is not None:
                raise self._error
            if self.done:
                return []
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        messages, self._messages = self._messages, []
        return messages if len(messages) == 1 else merge(messages)


def merge(messages: Iterable[pb.GenerateResponse]) -> list[pb.GenerateResponse]:
    """Consecutive messages of a generation as one per sample: what the engine would have sent had it
    waited (tokens, text and logprobs in order, the last finish, usage)."""
    merged: dict[int, pb.GenerateResponse] = {}
    for m in messages:
        into = merged.get(m.index)
        if into is None:
            merged[m.index] = m
            continue
        into.token_ids.extend(m.token_ids)
        into.text += m.text
        into.logprobs.extend(m.logprobs)
        if m.finish_reason:
            into.finish_reason, into.stop_reason = m.finish_reason, m.stop_reason
        if m.HasField("usage"):
            into.usage.CopyFrom(m.usage)
    return sorted(merged.values(), key=lambda m: m.HasField("usage"))


class Multiplexer:
    """One engine's Multiplex call, opened on first use; when it ends (engine gone, channel closed) its
    sinks fail and the next `open` starts a new call."""

    def __init__(self, stub, address: str):
        self._stub = stub
        self.address = address
        self._handles = itertools.count(1)
        self._sinks: dict[int, Sink] = {}
        self._requests: asyncio.Queue | None = None
        self._reader: asyncio.Task | None = None
        self.unsupported = False  # the engine answered UNIMPLEMENTED (a version without Multiplex)

    @property
    def num_open(self) -> int:
        return len(self._sinks)

    def open(self, request: pb.GenerateRequest, metadata: Iterable[tuple[str, str]] = ()) -> Sink:
        """Starts a generation; its messages (or its error) arrive in the returned sink."""
        if self._reader is None or self._reader.done():
            self._start_call()
        handle = next(self._handles)
        sink = self._sinks[handle] = Sink(handle)
        self._requests.put_nowait(
            pb.MultiplexRequest(handle=handle, generate=request, metadata=dict(metadata))
        )
        return sink

    def cancel(self, sink: Sink) -> None:
        """The consumer is gone before the generation ended: the engine aborts it."""
        if self._sinks.pop(sink.handle, None) is not None and not sink.done:
            self._requests.put_nowait(pb.MultiplexRequest(handle=sink.handle, cancel=True))

    def abandon(self) -> None:
        """The engine stopped answering probes: end the call (its sinks fail) instead of waiting on it."""
        if self._reader is not None:
            self._reader.cancel()

    def _start_call(self) -> None:
        self._requests = requests = asyncio.Queue()

        async def request_stream():
            while (message := await requests.get()) is not _CLOSE:
                yield message

        call = self._stub.Multiplex(request_stream())
        self._reader = asyncio.create_task(self._read(call, requests), name=f"multiplex {self.address}")

    async def _read(self, call, requests: asyncio.Queue) -> None:
        error: BaseException | None = None
        sinks = self._sinks
        try:
            async for response in call:
                for m in response.messages:  # hot: once per generation per engine step
                    sink = sinks.get(m.handle)
                    if sink is None:
                        continue  # cancelled meanwhile
                    if m.error_code:
                        del sinks[m.handle]
                        code = _CODES.get(m.error_code, grpc.StatusCode.UNKNOWN)
                        sink.fail(rpc_error(code, m.error_message))
                        continue
                    sink.push(m.response)
                    if sink.done:
                        del sinks[m.handle]
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the engine ended the multiplexed stream")
        except grpc.aio.AioRpcError as err:
            error = err
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.CANCELLED, "the multiplexed stream was abandoned")
            call.cancel()
            raise
        finally:
            requests.put_nowait(_CLOSE)
            failed, self._sinks = self._sinks, {}
            for sink in failed.values():
                sink.fail(error)
