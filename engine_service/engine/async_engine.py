"""AsyncEngine: the asyncio side of the engine, over an engine loop running apart (engine_loop.py).

      add_request: validate, register ──▶ core.submit ──▶  engine loop (thread or process)
      abort / stop-string aborts        ──▶ core.submit
      _on_step: detokenize, stop strings ◀── publish(updates, stats), once per loop iteration
      kv_events (KvEventHub)             ◀── the step's KV-cache events, for SubscribeKvEvents
      RequestStream.get() / take(): all deltas queued for the request, one merged delta per sample

Every step's updates reach the event loop in one callback, as the engine built them (columns for the
plain one-token updates: no object per token on the way), and a stream sends everything queued for it in
one message per sample: when the front falls behind, messages carry more tokens instead of piling up.
A stream is read either by its own consumer (Generate's loop awaits `get()`) or through an outlet that
serves many streams at once (Multiplex: one writer takes every ready stream's deltas per wake-up).

Each stream also keeps its request's times (arrival here; first scheduled, from the loop; first token
and end, at the step that produced them) for metrics, the request's log line and its trace span.

A watchdog fails the engine (every stream ends with INTERNAL, `on_fatal` is called) when the loop exits
or dies, or when requests are outstanding and the loop has not finished an iteration for
`step_timeout_s`. It also watches the engine process's heartbeat (engine_loop.ProcessCore): silent for
`liveness_timeout_s`, the process is frozen (stopped, swapped out, stuck holding the GIL) and the engine
is `unresponsive`: its streams end with UNAVAILABLE (a router retries elsewhere and ejects it), new
requests are refused, `on_liveness(False)` turns health NOT_SERVING; when it beats again, it serves again.

Why two clocks: a step's length is the model's business (a long prefill of a large model takes seconds on
a GPU, minutes on a CPU), so no few-second step limit is safe; a heartbeat from a thread of the engine
process keeps beating through any step, and stops only when the process does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from engine_service.core.outputs import SequenceUpdate
from engine_service.core.pooling import pooling_params
from engine_service.core.sampling_params import SamplingParams
from engine_service.engine import updates_codec
from engine_service.engine.engine import EngineStats
from engine_service.engine.engine_loop import AbortRequest, AddRequest, ProcessCore, StepTimes, ThreadCore
from engine_service.engine.errors import EngineDeadError, EngineOverloadedError, EngineUnavailableError
from engine_service.engine.kv_event_hub import KvEventHub
from engine_service.engine.output_processor import OutputProcessor, SampleDelta, Usage

log = logging.getLogger(__name__)


class MetricsSink(Protocol):
    """What the front reports to the service's metrics (server/metrics.py's EngineMetrics)."""

    def step(self, stats: EngineStats, times: StepTimes, num_updates: int) -> None: ...
    def started(self, queued: float, scheduled: float, first_token: float) -> None: ...
    def first_token(self, stream: RequestStream) -> None: ...
    def finished(self, stream: RequestStream) -> None: ...


class Outlet(Protocol):
    """Reads many streams at once: told when each has something to send (or failed)."""

    def ready(self, stream: RequestStream) -> None: ...


# ---- the asyncio side ------------------------------------------------------------------------------
class RequestStream:
    """What the engine produced for one request and its consumer has not taken yet.

    The consumer is woken for the first output, for every finish, and otherwise once `stream_interval`
    tokens are waiting (1: every step). A larger interval sends fewer, bigger messages: less host work
    per token for the front, at the cost of smoothness (as vLLM's --stream-interval). With an `outlet`
    the outlet is told instead, and takes the deltas with `take()`.
    """

    def __init__(
        self,
        request_id: str,
        stream_interval: int = 1,
        num_prompt_tokens: int = 0,
        outlet: Outlet | None = None,
        num_sequences: int = 1,
        params_max_tokens: int = 0,
    ):
        self.request_id = request_id
        self.num_prompt_tokens = num_prompt_tokens
        self.num_sequences = num_sequences  # the request's n
        self.params_max_tokens = params_max_tokens  # its max_tokens (or what fits), for metrics
        self.owner: str | None = None  # who asked for it (the only caller whose Abort may end it)
        self.started = False  # a first token (or any output) arrived
        self.finished = False  # the request's last delta (with usage) was queued
        # The request's life, in time.monotonic() (the engine loop's clock too): None until it happens.
        self.arrival_time = time.monotonic()
        self.queued_time: float | None = None  # added to the engine's queue (in the loop)
        self.first_scheduled_time: float | None = None
        self.first_token_time: float | None = None
        self.finished_time: float | None = None
        self.finish_reason: str | None = None  # of the last sample to finish
        self.usage: Usage | None = None
        self._interval = stream_interval
        self._held = 0  # tokens queued and not yet taken by the consumer
        self._deltas: list[SampleDelta] = []
        self._error: BaseException | None = None
        self.outlet = outlet
        self.tag: object = None  # the outlet's name for this stream (a Multiplex handle)
        self._ready = asyncio.Event() if outlet is None else None

    def put(self, delta: SampleDelta) -> None:
        first = not self.started
        self._deltas.append(delta)
        self.started = True
        self.finished = delta.usage is not None
        self._held += len(delta.token_ids)
        if first or delta.finish_reason is not None or self._held >= self._interval:
            self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        if self.outlet is None:
            self._ready.set()
        else:
            self.outlet.ready(self)

    async def get(self) -> list[SampleDelta]:
        """Waits for output, then `take()`s it."""
        await self._ready.wait()
        self._ready.clear()
        return self.take()

    def take(self) -> list[SampleDelta]:
        """Everything queued since the last take, merged into one delta per sample: prompt logprobs first
        (so they lead the request's first message; sample 0, which carries them, is never behind its
        siblings in the scheduler), usage last. Raises the stream's error once it failed."""
        if self._error is not None:
            raise self._error
        deltas, self._deltas, self._held = self._deltas, [], 0
        if len(deltas) == 1:
            return deltas
        merged: dict[int, SampleDelta] = {}
        for d in deltas:
            if d.index in merged:
                merged[d.index].merge(d)
            else:
                merged[d.index] = d
        return sorted(merged.values(), key=lambda d: (d.usage is not None, d.prompt_logprobs is None))


class RateMeter:
    """Generated tokens per second over the last `window_s` seconds, from a running total."""

    def __init__(self, window_s: float = 5.0):
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()  # (time, total), at most one per 0.1 s

    def record(self, total: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self._samples and now - self._samples[-1][0] < 0.1:
            self._samples[-1] = (self._samples[-1][0], total)
        else:
            self._samples.append((now, total))
        # Keep one sample at or before the window's start as the base.
        while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
            self._samples.popleft()

    def rate(self, now: float | None = None) -> float:
        """Tokens since the newest sample at or before the window's start, per second since that sample.

        The owner records at least every second (the watchdog does), so that sample is about
        window_s old.
        """
        now = time.monotonic() if now is None else now
        if not self._samples:
            return 0.0
        base = self._samples[0]
        for sample in self._samples:
            if sample[0] > now - self.window_s:
                break
            base = sample
        elapsed = now - base[0]
        return (self._samples[-1][1] - base[1]) / elapsed if elapsed > 0 else 0.0


class AsyncEngine:
    """Streams requests through an engine loop (ThreadCore or ProcessCore). Lives on one event loop."""

    def __init__(
        self,
        core: ThreadCore | ProcessCore,
        tokenizer,
        *,
        max_waiting: int,
        step_timeout_s: float,
        max_logprobs: int = 20,
        stream_interval: int = 1,
        on_fatal: Callable[[str], None] = lambda reason: None,
        metrics: MetricsSink | None = None,
        liveness_timeout_s: float = 5.0,
        on_liveness: Callable[[bool], None] = lambda alive: None,
    ):
        self.model_info = core.info.model_info
        self.tokenizer = tokenizer
        # In a thread, validate with the engine's own checks (they read only what it fixed at start-up).
        # In a process, check the sampling options here; the loop rejects what only the engine can know.
        self._validate = core.engine.validate if isinstance(core, ThreadCore) else self._check_params
        self._max_logprobs = max_logprobs
        self._max_waiting = max_waiting
        self._stream_interval = stream_interval
        self._step_timeout_s = step_timeout_s
        self._liveness_timeout_s = liveness_timeout_s
        self._on_liveness = on_liveness
        self.unresponsive: str | None = None  # why the engine process seems frozen; None: it beats
        self._on_fatal = on_fatal
        self._processor = OutputProcessor(tokenizer)
        self._streams: dict[str, RequestStream] = {}
        self._embeds: dict[str, asyncio.Future] = {}  # an embedding model's inputs: their vectors
        # Sequences (each request's n samples) with no output yet: bounded by max_waiting. Counting requests
        # would let one request of n=128 weigh as much as one of n=1.
        self._num_waiting = 0
        self.stats: EngineStats = core.info.stats
        self.initial_stats = core.info.stats  # after the warm-up: counters reported to metrics start here
        self.metrics = metrics  # None: no Prometheus metrics (--metrics-port 0)
        self.meter = RateMeter()
        self.error: str | None = None
        self._stopping = False
        self._last_progress = time.monotonic()  # the loop's last iteration, or when work arrived while idle
        self._loop = asyncio.get_running_loop()
        self._core = core
        self._watchdog: asyncio.Task | None = None
        # The KV-cache events of every step, for SubscribeKvEvents (routers' cache-aware routing).
        self.kv_events = KvEventHub(self.model_info.block_size)

    def start(self) -> None:
        self._core.start(self._publish_threadsafe, self._on_core_exit)
        self._watchdog = asyncio.create_task(self._watch(), name="engine-watchdog")

    # ---- requests ------------------------------------------------------------------------------
    @property
    def num_requests(self) -> int:
        return len(self._streams)

    @property
    def num_waiting(self) -> int:
        """Sequences accepted that have produced nothing yet (queued, or in their prefill)."""
        return self._num_waiting

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        cache_salt: str | None = None,
        outlet: Outlet | None = None,
        owner: str | None = None,
    ) -> RequestStream:
        """Validates and queues a request; raises ValueError (bad input) or EngineOverloadedError.
        `outlet`: who reads the stream (see RequestStream); None, its own consumer. `owner`: who asked
        (pagoda/grpc_auth.caller_identity), the only one whose Abort may end it."""
        if self.error is not None:
            raise EngineDeadError(self.error)
        if self.unresponsive is not None:
            raise EngineUnavailableError(self.unresponsive)
        if request_id in self._streams:
            raise ValueError(f"request_id {request_id!r} is already in use")
        self._validate(prompt_token_ids, params)
        if self._num_waiting and self._num_waiting + params.n > self._max_waiting:
            raise EngineOverloadedError(
                f"the engine has {self._num_waiting} sequences waiting, and takes at most "
                f"{self._max_waiting} (--max-waiting): retry later"
            )
        self._processor.add_request(request_id, prompt_token_ids, params)
        if not self._streams:  # the loop was idle: it owes an iteration from now on
            self._last_progress = time.monotonic()
        max_tokens = params.max_tokens or self.model_info.max_model_len - len(prompt_token_ids)
        stream = RequestStream(
            request_id, self._stream_interval, len(prompt_token_ids), outlet, params.n, max_tokens
        )
        stream.owner = owner
        self._streams[request_id] = stream
        self._num_waiting += params.n
        self._core.submit(AddRequest(request_id, list(prompt_token_ids), params, cache_salt))
        return stream

    def embed(
        self, request_id: str, prompts: list[list[int]], cache_salt: str | None = None
    ) -> list[asyncio.Future]:
        """Queues each prompt as request `<request_id>-<i>` of an embedding model; each future resolves to
        its pooled vector (or raises ValueError if the engine refused it)."""
        if self.error is not None:
            raise EngineDeadError(self.error)
        if self.unresponsive is not None:
            raise EngineUnavailableError(self.unresponsive)
        params = pooling_params()
        ids = [f"{request_id}-{i}" for i in range(len(prompts))]
        for rid, prompt in zip(ids, prompts, strict=True):
            if rid in self._embeds or rid in self._streams:
                raise ValueError(f"request_id {rid!r} is already in use")
            self._validate(prompt, params)
        if not self._streams and not self._embeds:  # the loop was idle: it owes an iteration from now on
            self._last_progress = time.monotonic()
        futures = []
        for rid, prompt in zip(ids, prompts, strict=True):
            futures.append(self._embeds.setdefault(rid, self._loop.create_future()))
            self._core.submit(AddRequest(rid, list(prompt), params, cache_salt))
        return futures

    def abort_embeds(self, request_id: str, count: int) -> None:
        """Drops the inputs of `embed(request_id, ...)` still running (the caller went away)."""
        for i in range(count):
            future = self._embeds.pop(f"{request_id}-{i}", None)
            if future is not None:
                future.cancel()
                self._core.submit(AbortRequest(f"{request_id}-{i}"))

    def abort(self, request_id: str, owner: str | None = None) -> bool:
        """Ends the request's stream now (finish_reason "abort"); the engine frees its blocks next step.
        With `owner`, only a request of that owner (another's is as unknown: False)."""
        stream = self._streams.get(request_id)
        if stream is None or (owner is not None and stream.owner != owner):
            return False
        self._core.submit(AbortRequest(request_id))
        self._deliver(self._processor.abort(request_id), time.monotonic())
        return True

    def abort_all(self) -> None:
        for request_id in list(self._streams):
            self.abort(request_id)

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Aborts what is left and stops the loop."""
        self._stopping = True
        self.abort_all()
        self.kv_events.close(EngineUnavailableError("the engine is shutting down"))
        self._core.stop()
        if self._watchdog is not None:
            self._watchdog.cancel()
        await asyncio.to_thread(self._core.join, timeout_s)

    def _check_params(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids:
            raise ValueError("prompt must contain at least one token")
        params.validate(self.model_info.vocab_size, self._max_logprobs)

    # ---- from the loop -------------------------------------------------------------------------
    def _publish_threadsafe(self, updates, stats, rejected, times) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_step, updates, stats, rejected, times)
        except RuntimeError:  # the event loop is closed: the process is exiting
            pass

    def _on_step(
        self,
        updates: updates_codec.PackedUpdates,
        stats: EngineStats,
        rejected: list[tuple[str, str]],
        times: StepTimes,
    ) -> None:
        if self.error is not None:
            return
        self._last_progress = time.monotonic()
        self.stats = stats
        self.meter.record(stats.num_generation_tokens)
        if times.kv_events:
            self.kv_events.publish(times.kv_events)
        if times.started:  # before the deltas: a request may finish in the step of its first token
            self._started(times.started)
        if self._embeds:
            self._deliver_embeddings(updates.other, rejected)
        deltas, aborts = self._processor.process_packed(updates)
        for request_id, index in aborts:  # stop strings
            self._core.submit(AbortRequest(request_id, index))
        self._deliver(deltas, times.time)
        if self.metrics is not None:
            self.metrics.step(stats, times, len(updates.request_ids) + len(updates.other))
        for request_id, message in rejected:
            self._processor.abort(request_id)
            stream = self._streams.pop(request_id, None)
            if stream is not None:
                self._num_waiting -= 0 if stream.started else stream.num_sequences
                stream.fail(ValueError(message))

    def _deliver_embeddings(self, updates: list[SequenceUpdate], rejected: list[tuple[str, str]]) -> None:
        for u in updates:
            if u.embedding is not None:
                future = self._embeds.pop(u.request_id, None)
                if future is not None and not future.done():
                    future.set_result(u.embedding)
        for request_id, message in rejected:
            future = self._embeds.pop(request_id, None)
            if future is not None and not future.done():
                future.set_exception(ValueError(message))

    def _started(self, started: list[tuple[str, float, float, float]]) -> None:
        for request_id, queued, scheduled, first_token in started:
            stream = self._streams.get(request_id)
            if stream is not None and stream.first_scheduled_time is None:  # n > 1: the first sample's
                stream.queued_time, stream.first_scheduled_time = queued, scheduled
            if self.metrics is not None:
                self.metrics.started(queued, scheduled, first_token)

    def _deliver(self, deltas: list[SampleDelta], now: float) -> None:
        """`now`: when these deltas' tokens were produced (the step's time), for the streams' timings."""
        for d in deltas:
            stream = self._streams.get(d.request_id)
            if stream is None:
                continue
            if not stream.started:
                self._num_waiting -= stream.num_sequences
                if d.token_ids:
                    stream.first_token_time = now
                    if self.metrics is not None:
                        self.metrics.first_token(stream)
            stream.put(d)
            if stream.finished:
                del self._streams[d.request_id]
                stream.finished_time, stream.finish_reason, stream.usage = now, d.finish_reason, d.usage
                if self.metrics is not None:
                    self.metrics.finished(stream)

    def _on_core_exit(self, error: BaseException | None) -> None:
        if error is not None:
            log.critical("the engine loop died: %s", error, exc_info=error)
        if not self._stopping:
            reason = (
                f"the engine loop died: {type(error).__name__}: {error}"
                if error
                else "the engine loop exited"
            )
            try:
                self._loop.call_soon_threadsafe(self._fail, reason)
            except RuntimeError:  # the event loop is closed: the process is exiting
                pass

    # ---- failure -------------------------------------------------------------------------------
    async def _watch(self) -> None:
        interval = min(1.0, self._step_timeout_s / 4, self._liveness_timeout_s / 4)
        while self.error is None:
            await asyncio.sleep(interval)
            self.meter.record(self.stats.num_generation_tokens)  # keeps the rate falling while idle
            silent_s = time.monotonic() - self._last_progress
            if (self._streams or self._embeds) and silent_s > self._step_timeout_s:
                self._fail(f"the engine loop has not finished a step for {silent_s:.1f} s (stalled)")
            self._check_heartbeat()

    def _check_heartbeat(self) -> None:
        age = self._core.heartbeat_age()
        if age > self._liveness_timeout_s and self.unresponsive is None and not self._stopping:
            self.unresponsive = f"the engine process has not responded for {age:.1f} s (frozen)"
            log.error("%s: refusing requests, ending %d streams", self.unresponsive, len(self._streams))
            for request_id in list(self._streams):  # aborted in the engine once it runs again
                self._core.submit(AbortRequest(request_id))
                self._processor.abort(request_id)
            streams, self._streams, self._num_waiting = self._streams, {}, 0
            for stream in streams.values():
                stream.fail(EngineUnavailableError(self.unresponsive))
            embeds, self._embeds = self._embeds, {}
            for request_id, future in embeds.items():
                self._core.submit(AbortRequest(request_id))
                if not future.done():
                    future.set_exception(EngineUnavailableError(self.unresponsive))
            self._on_liveness(False)
        elif age <= self._liveness_timeout_s and self.unresponsive is not None:
            log.warning("the engine process responds again (%s); serving", self.unresponsive)
            self.unresponsive = None
            self._on_liveness(True)

    def _fail(self, reason: str) -> None:
        if self.error is not None or self._stopping:
            return
        log.critical("engine failed: %s", reason)
        self.error = reason
        self._core.stop()  # a stalled loop exits once its step returns
        self._core.kill()  # an engine process is killed at once
        streams, self._streams, self._num_waiting = self._streams, {}, 0
        for stream in streams.values():
            stream.fail(EngineDeadError(f"engine failed: {reason}"))
        embeds, self._embeds = self._embeds, {}
        for future in embeds.values():
            if not future.done():
                future.set_exception(EngineDeadError(f"engine failed: {reason}"))
        self.kv_events.close(EngineDeadError(f"engine failed: {reason}"))
        self._on_fatal(reason)
