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


# A sink holds at most this many messages; one more merges them into one per sample. A handler stalled on
# a slow client then costs the router its unread tokens (bounded by max_tokens), not a message per step.
MAX_QUEUED = 32


class Sink:
    """One generation's messages, as the reader hands them over; read by one consumer. Never blocks the
    reader: a consumer that falls behind finds what it missed merged."""

    __slots__ = ("handle", "call", "_messages", "_waiter", "_error", "done")

    def __init__(self, handle: int, call: _Call | None = None):
        self.handle = handle
        self.call = call  # the Multiplex call the generation runs on
        self._messages: list[pb.GenerateResponse] = []
        self._waiter: asyncio.Future | None = None
        self._error: BaseException | None = None
        self.done = False  # the last message (with usage) arrived, or an error

    def push(self, message: pb.GenerateResponse) -> None:
        messages = self._messages
        messages.append(message)
        if len(messages) > MAX_QUEUED:
            self._messages = merge(messages)
        if message.finish_reason and message.HasField("usage"):  # (usage comes with a sample's end)
            self.done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error
            self.done = True
            self._wake()

    @property
    def num_queued(self) -> int:
        return len(self._messages)

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


class _Call:
    """One Multiplex call: the queue its request stream reads, its live generations, the task reading it."""

    __slots__ = ("requests", "sinks", "reader", "retired")

    def __init__(self) -> None:
        self.requests: asyncio.Queue = asyncio.Queue()
        self.sinks: dict[int, Sink] = {}
        self.reader: asyncio.Task | None = None
        self.retired = False  # takes no new generations; its request side closes once its last one ended

    def release(self, handle: int) -> Sink | None:
        sink = self.sinks.pop(handle, None)
        if self.retired and not self.sinks:
            self.requests.put_nowait(_CLOSE)
        return sink


class Multiplexer:
    """One engine's Multiplex calls: new generations go over the current one, opened on first use; when
    it ends (engine gone, channel closed) its sinks fail and the next `open` starts a new call. After a
    channel change (`use_stub`) the previous call finishes its generations on the old channel."""

    def __init__(self, address: str, metadata: Iterable[tuple[str, str]] = ()):
        self.address = address
        self._metadata = tuple(metadata)  # the call's own (the gRPC token, when engines ask for one)
        self._stub = None
        self._handles = itertools.count(1)  # unique over every call, so a late message never finds a stranger
        self._call: _Call | None = None  # where new generations go
        self._calls: set[_Call] = set()  # every call still read: the current one and retired ones
        self.unsupported = False  # the engine answered UNIMPLEMENTED (a version without Multiplex)

    @property
    def num_open(self) -> int:
        return sum(len(call.sinks) for call in self._calls)

    def use_stub(self, stub) -> None:
        """New generations go over a call on `stub` (a new channel: the router's TLS files changed); the
        current call takes no more and ends once its generations have."""
        self._stub = stub
        call, self._call = self._call, None
        if call is not None:
            call.retired = True
            if not call.sinks:
                call.requests.put_nowait(_CLOSE)

    def open(self, request: pb.GenerateRequest, metadata: Iterable[tuple[str, str]] = ()) -> Sink:
        """Starts a generation; its messages (or its error) arrive in the returned sink."""
        call = self._call
        if call is None or call.reader.done():
            call = self._call = self._start_call()
        handle = next(self._handles)
        sink = call.sinks[handle] = Sink(handle, call)
        call.requests.put_nowait(
            pb.MultiplexRequest(handle=handle, generate=request, metadata=dict(metadata))
        )
        return sink

    def cancel(self, sink: Sink) -> None:
        """The consumer is gone before the generation ended: the engine aborts it (and frees its blocks);
        the other generations on the call go on."""
        call = sink.call
        if sink.handle in call.sinks and not sink.done:
            call.requests.put_nowait(pb.MultiplexRequest(handle=sink.handle, cancel=True))
        call.release(sink.handle)  # after the cancel: on a retired call it may close the request side

    def abandon(self) -> None:
        """The engine stopped answering probes: end its calls (their sinks fail), not wait on them."""
        for call in list(self._calls):
            call.reader.cancel()

    def _start_call(self) -> _Call:
        call = _Call()
        requests = call.requests

        async def request_stream():
            while (message := await requests.get()) is not _CLOSE:
                yield message

        rpc = self._stub.Multiplex(request_stream(), metadata=self._metadata)
        call.reader = asyncio.create_task(self._read(call, rpc), name=f"multiplex {self.address}")
        self._calls.add(call)
        return call

    async def _read(self, call: _Call, rpc) -> None:
        error: BaseException | None = None
        sinks = call.sinks
        try:
            async for response in rpc:
                for m in response.messages:  # hot: once per generation per engine step
                    sink = sinks.get(m.handle)
                    if sink is None:
                        continue  # cancelled meanwhile
                    if m.error_code:
                        call.release(m.handle)
                        code = _CODES.get(m.error_code, grpc.StatusCode.UNKNOWN)
                        sink.fail(rpc_error(code, m.error_message))
                        continue
                    sink.push(m.response)
                    if sink.done:
                        call.release(m.handle)
            error = rpc_error(grpc.StatusCode.UNAVAILABLE, "the engine ended the multiplexed stream")
        except grpc.aio.AioRpcError as err:
            error = err
        except asyncio.CancelledError:
            error = rpc_error(grpc.StatusCode.CANCELLED, "the multiplexed stream was abandoned")
            rpc.cancel()
            raise
        finally:
            call.requests.put_nowait(_CLOSE)
            self._calls.discard(call)
            failed = list(sinks.values())
            sinks.clear()
            for sink in failed:
                sink.fail(error)
