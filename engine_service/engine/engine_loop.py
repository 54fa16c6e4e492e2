"""The engine loop, apart from the gRPC front: in a thread of the same process, or in a process of its own.

    front (asyncio)                                 engine loop (never waits on the network)
      submit(AddRequest / AbortRequest) ──FIFO──▶   drain commands: engine.add_request / engine.abort
                                                    engine.step()
      publish(updates, stats, rejected, times) ◀─    once per iteration

The Engine is not thread-safe; only the loop touches it. Commands arrive in order, so an abort always
reaches the engine before a later add that reuses the request id. With no work the loop blocks on its
inbox. Each iteration publishes once, even with no new tokens (a chunked prefill), so the front can tell
a busy loop from a stuck one. `times` carries what metrics and traces need from the loop, per step (its
time) and per request (queued / first-scheduled / first-token times, once, at the first token): nothing per
token.

ThreadCore runs the loop in a daemon thread (shares the GIL with the front). ProcessCore runs it in a
spawned process and exchanges pickled commands and step results over two pipes, so streaming to many
clients never takes the GIL from the GPU loop.
"""

from __future__ import annotations

import fcntl
import gc
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import NamedTuple

from engine_service.core.config import EngineConfig
from engine_service.core.sampling_params import SamplingParams
from engine_service.engine import updates_codec
from engine_service.engine.engine import Engine, EngineStats, ModelInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AddRequest:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    cache_salt: str | None = None


@dataclass(frozen=True, slots=True)
class AbortRequest:
    request_id: str
    index: int | None = None  # None: every sample of the request


STOP = "stop"  # the command that ends the loop
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux
IDLE_CHECK_S = 1.0  # how often an idle loop checks that the engine can still run
HEARTBEAT_S = 0.25  # how often the engine process says it is alive (ProcessCore.heartbeat_age)


class StepTimes(NamedTuple):
    """One iteration's timings (time.monotonic(), which is system-wide: comparable across processes), and
    the KV-cache events of its step (BlockManager.take_events), for the event stream."""

    time: float  # when the iteration's step returned (its tokens were sampled just before)
    # Sequences that got their first token in this step: (request_id, queued, first scheduled, first token).
    started: list[tuple[str, float, float, float]]
    kv_events: Sequence[tuple] = ()  # ("stored", key, parent, token ids) | ("removed", key) | ("cleared",)


# One iteration's result: new tokens (as the engine built them: updates_codec), a stats snapshot, rejected
# (request_id, message) adds, timings. The front reads the columns as they are: no object per token.
Publish = Callable[[updates_codec.PackedUpdates, EngineStats, list[tuple[str, str]], StepTimes], None]
OnExit = Callable[[BaseException | None], None]


def run_loop(engine: Engine, receive: Callable[[bool], list], publish: Publish) -> None:
    """Runs until STOP. `receive(block)` returns the pending commands; when block is true it waits for one,
    at most IDLE_CHECK_S: an idle engine checks each quiet second that it can still run (a tensor-parallel
    worker may have died), so health turns NOT_SERVING without waiting for the next request."""
    changed = False  # since the last integrity check
    engine.started = []
    engine.block_manager.start_events()
    while True:
        idle = not engine.has_unfinished()
        if idle and changed:  # nothing left (the last request may have been aborted): no block in use
            engine.block_manager.check_all_free()
            changed = False
        rejected = []
        commands = receive(idle)
        if idle and not commands:
            engine.check_alive()
            continue
        for command in commands:
            if command == STOP:
                return
            rejected += _apply(engine, command)
        changed = True
        updates = engine.step_packed() if engine.has_unfinished() else updates_codec.empty()
        times = StepTimes(time.monotonic(), _started(engine), engine.block_manager.take_events())
        publish(updates, engine.stats(), rejected, times)


def _started(engine: Engine) -> list[tuple[str, float, float, float]]:
    if not engine.started:
        return []
    out = [(s.request_id, s.arrival_time, s.first_scheduled_time, s.first_token_time) for s in engine.started]
    engine.started.clear()
    return out


def _apply(engine: Engine, command: AddRequest | AbortRequest) -> list[tuple[str, str]]:
    if isinstance(command, AbortRequest):
        engine.abort(command.request_id, command.index)
        return []
    try:  # a request the engine cannot take is reported back, never raised into the loop
        engine.add_request(command.request_id, command.prompt_token_ids, command.params, command.cache_salt)
    except ValueError as e:
        return [(command.request_id, str(e))]
    return []


# Prompt lengths of the warm-up's waves: a lone prefill, then prefills of several prompts of odd and
# multiple-of-16 lengths mixed into decodes, then a lone prompt of one token.
WARM_UP_WAVES = ((8,), (37, 64, 5), (16, 100), (1,))


def warm_up(engine: Engine) -> None:
    """Steps of the shapes serving meets, before the service says SERVING: each wave of prompts joins the
    batch while the earlier ones decode, half greedy and half with random top-k/top-p sampling. Triton
    specializes a kernel on its integer arguments (1, multiples of 16, others), so the variants that
    mixed steps need compile here and not inside the first requests' steps."""
    vocab = engine.model_info.vocab_size
    bm = engine.block_manager
    longest = max(1, min(engine.max_model_len, bm.num_blocks * bm.block_size) - 5)  # + 4 tokens must fit
    greedy = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    sampled = SamplingParams(max_tokens=4, temperature=1.0, top_k=50, top_p=0.9, seed=0, ignore_eos=True)
    n = 0
    for wave in WARM_UP_WAVES:
        for length in wave:
            prompt = [(7 * i + 13 * n + 11) % vocab for i in range(min(length, longest))]
            engine.add_request(f"warm-up-{n}", prompt, greedy if n % 2 == 0 else sampled)
            n += 1
        engine.step()
    while engine.has_unfinished():
        engine.step()


def freeze_startup_objects() -> None:
    """Moves every object alive now out of the collector's generations, as vLLM and SGLang do once warm.

    The model, the torch and CUDA state and the imported modules are some 10^5 container objects that live
    as long as the process. Each full collection would walk them all (~45 ms on a CPU engine, more on a
    GPU one: a stall of many decode steps), and requests streaming in do set full collections off now and
    then. Frozen, they are never walked again. (The step loop itself frees what it allocates: a steady
    decode runs no collection at all, so the thresholds stay as they are.)
    """
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class CoreInfo:
    """What the front needs from the engine once it is up."""

    model_info: ModelInfo
    stats: EngineStats


class ThreadCore:
    """The loop in a daemon thread of this process, over an already built (and warmed-up) Engine."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.info = CoreInfo(engine.model_info, engine.stats())
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self, publish: Publish, on_exit: OnExit) -> None:
        def run() -> None:
            error = None

            try:
                run_loop(self.engine, self._receive, publish)
            except BaseException as e:  # noqa: BLE001 (whatever ends the loop must reach the watchdog)
                error = e
            on_exit(error)

        self._thread = threading.Thread(target=run, name="engine-loop", daemon=True)
        self._thread.start()

    def submit(self, command) -> None:
        self._inbox.put(command)

    def stop(self) -> None:
        self._inbox.put(STOP)

    def join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def kill(self) -> None:
        pass  # a thread cannot be killed; it is a daemon, and the process exits

    def heartbeat_age(self) -> float:
        """0: the loop shares this process, whose own liveness is what health checks see."""
        return 0.0

    def _receive(self, block: bool) -> list:
        commands = []
        if block:
            try:
                commands.append(self._inbox.get(timeout=IDLE_CHECK_S))
            except queue.Empty:
                return commands
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                return commands


class ProcessCore:
    """The loop in a spawned process: builds the Engine there, warms it up, then serves commands."""

    def __init__(
        self,
        config: EngineConfig,
        log_format: str = "text",
        engine_factory: Callable[[EngineConfig], Engine] = Engine,
    ):
        """`engine_factory` builds the Engine in the child: it must pickle (a class, a module's function)."""
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
        self._commands_rx, self._commands_tx = ctx.Pipe(duplex=False)
        self._results_rx, self._results_tx = ctx.Pipe(duplex=False)
        _widen(self._results_tx)
        # Shared memory the process's heartbeat thread stamps with time.monotonic() (system-wide).
        self._heartbeat = ctx.RawValue("d", time.monotonic())
        self._process = ctx.Process(
            target=_process_main,
            args=(engine_factory, config, log_format, self._commands_rx, self._results_tx, self._heartbeat),
            name="engine-core",
            daemon=True,
        )
        self._reader: threading.Thread | None = None
        # Commands go through a sender thread: a burst of adds larger than the pipe's buffer must not block
        # the event loop while the engine is busy with a step. Each send carries every queued command.
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_loop, name="engine-commands", daemon=True)
        self.info: CoreInfo | None = None

    def load(self) -> CoreInfo:
        """Starts the process and waits (blocking) until its engine is built and warm."""
        self._process.start()
        self._commands_rx.close()  # the child's ends: closed here, so EOF is seen when the child dies
        self._results_tx.close()
        try:
            kind, payload = self._results_rx.recv()
        except EOFError:
            raise RuntimeError(f"the engine process exited with status {self._process.exitcode}") from None
        if kind == "error":
            raise RuntimeError(f"the engine process failed to start: {payload}")
        self.info = payload
        self._sender.start()
        return payload

    def start(self, publish: Publish, on_exit: OnExit) -> None:
        def read() -> None:
            error: BaseException | None = None
            try:
                while True:
                    kind, payload = self._results_rx.recv()
                    if kind == "step":
                        publish(*payload)  # (packed updates, stats, rejected, times)
                    else:  # "exit": the loop ended (payload: None or the error's text)
                        error = RuntimeError(payload) if payload else None
                        break
            except (EOFError, OSError):
                error = RuntimeError(f"the engine process died (exit status {self._process.exitcode})")
            on_exit(error)

        self._reader = threading.Thread(target=read, name="engine-results", daemon=True)
        self._reader.start()

    def submit(self, command) -> None:
        self._outbox.put(command)

    def stop(self) -> None:
        self._outbox.put(STOP)

    def _send_loop(self) -> None:
        while True:
            batch = [self._outbox.get()]
            while True:
                try:
                    batch.append(self._outbox.get_nowait())
                except queue.Empty:
                    break
            try:
                self._commands_tx.send(batch)
            except OSError:  # the process is gone: the reader reports it
                return
            if STOP in batch:
                return

    def join(self, timeout: float | None) -> None:
        self._process.join(timeout)
        if self._process.is_alive():
            self.kill()
        if self._reader is not None:
            self._reader.join(timeout)

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()

    def heartbeat_age(self) -> float:
        """Seconds since the engine process last showed a sign of life. A thread of its own stamps the
        time every HEARTBEAT_S, whatever the loop is doing: a long step goes on beating (the GIL is free
        while kernels run), a process that is stopped, swapped out or stuck holding the GIL does not."""
        return time.monotonic() - self._heartbeat.value


def _beat(heartbeat) -> None:
    while True:
        heartbeat.value = time.monotonic()
        time.sleep(HEARTBEAT_S)


PIPE_BYTES = 1 << 20


def _widen(conn: Connection) -> None:
    """Linux pipes hold 64 KiB: a few steps of a large batch. The engine loop must never block on a send
    because the front is busy for a moment (it would stall the GPU), so the results pipe gets 1 MiB where
    the system allows it (fs.pipe-max-size)."""
    try:
        fcntl.fcntl(conn.fileno(), F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:
        log.debug("could not widen the results pipe; it keeps the system's default size")


def _process_main(
    engine_factory: Callable[[EngineConfig], Engine],
    config: EngineConfig,
    log_format: str,
    commands: Connection,
    results: Connection,
    heartbeat,
) -> None:
    from pagoda.telemetry.logging import setup_logging

    threading.Thread(target=_beat, args=(heartbeat,), name="engine-heartbeat", daemon=True).start()
    # The front owns shutdown: it drains on SIGTERM and then sends STOP; Ctrl-C reaches the whole group.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(log_format, "engine")
    try:
        engine = engine_factory(config)
        warm_up(engine)
        freeze_startup_objects()
    except Exception as e:
        results.send(("error", f"{type(e).__name__}: {e}"))
        return
    results.send(("ready", CoreInfo(engine.model_info, engine.stats())))

    def receive(block: bool) -> list:  # the front sends lists of commands
        out = list(commands.recv()) if block and commands.poll(IDLE_CHECK_S) else []
        while commands.poll():
            out.extend(commands.recv())
        return out

    def publish(packed, stats, rejected, times) -> None:  # as the engine built them: no packing here
        results.send(("step", (packed, stats, rejected, times)))

    try:
        run_loop(engine, receive, publish)
    except (EOFError, BrokenPipeError):  # the front is gone
        return
    except BaseException as e:
        results.send(("exit", f"{type(e).__name__}: {e}"))
        raise
    results.send(("exit", None))
