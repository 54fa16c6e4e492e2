"""MultiProcExecutor: one worker process per tensor-parallel rank; the scheduler stays with the driver.

    driver (the Engine's process)                 workers, one per GPU (or CPU + gloo)
      schedule ─▶ SchedulerOutput, ──────────────────▶ rank 0: batch ▸ forward (all-reduces) ▸ sample
                  pickled once per step ─────────────▶ rank 1: batch ▸ forward (all-reduces) ▸ sample
      SampleResult ◀──────────────────────────────── rank 0 only

The step message is the SchedulerOutput itself, without the driver's Sequence objects: new sequences
whole, the others as a diff. Each rank's model runner keeps its persistent batch from it, as a single
process does, so the driver keeps nothing per sequence.

Every rank samples (the same tokens: the logits are gathered whole on each rank and the noise is
counter-based), so with async scheduling each rank fills step n+1's placeholders from step n's tokens
on its own device while the driver already schedules; rank 0 sends the tokens to the host.

The driver takes no part in the collectives: it only sends and receives, so a dead rank can never leave
it stuck in one. It waits for replies on every worker's socket at once, so a worker that exits (EOF)
or reports an error fails the step within a second, whatever the others are doing; the others are
killed then (they may be waiting in a collective for the dead one). The error says which rank failed
and why; the engine service turns it into NOT_SERVING and a non-zero exit.

Workers are plain subprocesses (not multiprocessing children: the engine loop's own process is a daemonic
multiprocessing child, which may not have any). Each gets one end of a socket pair and dies with the
driver (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait

import torch
import torch.distributed as dist

from engine_service.core.model_config import ModelConfig
from engine_service.core.scheduler_output import SchedulerOutput
from engine_service.distributed.group import check_tp_size, cpu_threads_per_rank, worker_env
from engine_service.executor.executor import Executor
from engine_service.worker.model_runner import GrammarMask
from engine_service.worker.sampler import SampleResult
from engine_service.worker.tp_worker import WorkerSpec

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 10.0  # a clean stop: workers leave the process group and exit, or are killed


class WorkerError(RuntimeError):
    """A tensor-parallel worker died or failed: the executor cannot run steps any more."""


@dataclass
class WorkerProcess:
    rank: int
    proc: subprocess.Popen
    conn: Connection

    def describe(self) -> str:
        try:
            code = self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            code = None
        status = "still running" if code is None else f"exit status {code}"
        return f"tensor-parallel worker {self.rank} (pid {self.proc.pid}, {status})"


class RankZeroAnswer:
    """A launched step; `result()` waits for rank 0's answer. Results are collected in launch order."""

    def __init__(self, executor: MultiProcExecutor):
        self._executor = executor

    def result(self) -> SampleResult:
        result = self._executor._receive([0])[0]
        self._executor._num_unanswered -= 1
        return result


class MultiProcExecutor(Executor):
    # The driver schedules step n+1 while the ranks run step n: every rank samples, so each resolves the
    # placeholders of step n's tokens on its own device.
    supports_async = True

    def __init__(self, spec: WorkerSpec, model_config: ModelConfig):
        check_tp_size(model_config, spec.tp_size, spec.device)
        self.device = torch.device(spec.device)
        self.tp_size = spec.tp_size
        self._error: str | None = None
        self._num_unanswered = 0  # steps launched whose tokens have not been collected
        self._profiling = False
        # The ranks meet at a TCPStore served here, on a port the OS picks: no port to choose or race for.
        self._store = dist.TCPStore("127.0.0.1", 0, spec.tp_size, is_master=True, wait_for_workers=False)
        spec = replace(spec, store_port=self._store.port)
        self._released = threading.Event()  # ends the thread the workers were started from
        self.workers = _launch(spec, self._released)
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop_workers, args=(self.workers, self._released), exitpriority=10
        )
        pids = [w.proc.pid for w in self.workers]
        log.info("started %d tensor-parallel workers (pids %s)", spec.tp_size, pids)
        try:
            replies = self._receive(range(self.tp_size))  # each rank's model is built
        except BaseException:
            self.shutdown()
            raise
        self._kv_bytes_per_block = replies[0]

    # ---- the Executor interface -----------------------------------------------------------------
    @property
    def kv_bytes_per_block(self) -> int:
        return self._kv_bytes_per_block

    def profile_num_kv_blocks(self, gpu_memory_utilization: float, max_num_batched_tokens: int) -> int:
        # Every rank holds the same number of blocks; the tightest GPU decides.
        return min(self._call("profile_num_kv_blocks", gpu_memory_utilization, max_num_batched_tokens))

    def allocate_kv_cache(self, num_blocks: int, num_sliding_blocks: int | None = None) -> None:
        self._call("allocate_kv_cache", num_blocks, num_sliding_blocks)

    def capture_cuda_graphs(self, max_num_seqs: int, max_model_len: int) -> None:
        self._call("capture_cuda_graphs", max_num_seqs, max_model_len)

    def start_profile(self, trace_dir: str) -> None:
        if self._profiling:  # checked here: an error on a rank would end the engine
            raise RuntimeError("a profile is already running")
        self._call("start_profile", trace_dir)
        self._profiling = True

    def stop_profile(self) -> list[str]:
        if not self._profiling:
            raise RuntimeError("no profile is running (start_profile first)")
        self._profiling = False
        return self._call("stop_profile")

    def launch(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None) -> RankZeroAnswer:
        # The grammar mask is worked out before the step is sent (no overlap with its forward pass across
        # processes): every rank draws, so every rank needs it.
        mask = grammar_mask() if grammar_mask is not None else None
        self._broadcast(
            ("step", (out, mask))
        )  # out pickled as the runner's fields (SchedulerOutput.__reduce__)
        self._num_unanswered += 1
        return RankZeroAnswer(self)

    def execute(self, out: SchedulerOutput, grammar_mask: GrammarMask | None = None) -> SampleResult:
        return self.launch(out, grammar_mask).result()

    def num_sequences(self) -> list[int]:
        """Sequences each rank's model runner keeps (a test's probe: they must agree, and not leak)."""
        return self._call("num_sequences")

    def check_alive(self) -> None:
        if self._error is not None:
            raise WorkerError(self._error)
        for w in self.workers:
            if w.rank == 0 and self._num_unanswered:  # rank 0's conn may hold an answer not collected yet
                if w.proc.poll() is not None:
                    self._fail(f"{w.describe()} died")
                continue
            if w.proc.poll() is not None or w.conn.poll():  # exited, or an unasked message: an error or EOF
                self._receive_from(w, expected=False)

    def shutdown(self) -> None:
        self._finalizer()  # runs once: later calls do nothing
        if self._error is None:
            self._error = "the tensor-parallel workers were shut down"

    # ---- messages --------------------------------------------------------------------------------
    def _call(self, name: str, *args) -> list:
        self._broadcast(("call", name, args))
        return self._receive(range(self.tp_size))

    def _broadcast(self, message) -> None:
        if self._error is not None:
            raise WorkerError(self._error)
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)  # pickled once for all ranks
        for w in self.workers:
            try:
                w.conn.send_bytes(data)
            except OSError:
                self._fail(f"{w.describe()} died")

    def _receive(self, ranks: Iterable[int]) -> list:
        """The replies of `ranks`, in order; fails as soon as any worker dies or reports an error."""
        pending = {self.workers[r].conn: r for r in ranks}
        replies = {}
        by_conn = {w.conn: w for w in self.workers}
        while pending:
            ready = wait(list(by_conn), timeout=1.0)
            if not ready:  # nothing for a second: has a worker exited without closing its socket?
                for w in self.workers:
                    if w.proc.poll() is not None:
                        self._fail(f"{w.describe()} died")
                continue
            for conn in ready:
                w = by_conn[conn]
                payload = self._receive_from(w, expected=conn in pending)
                replies[pending.pop(conn)] = payload
        return [replies[r] for r in ranks]

    def _receive_from(self, w: WorkerProcess, expected: bool):
        try:
            kind, payload = w.conn.recv()
        except (EOFError, OSError):
            self._fail(f"{w.describe()} died")
        if kind == "error":
            self._fail(f"{w.describe()} failed:\n{payload}")
        if not expected:
            self._fail(f"{w.describe()} sent {kind!r} out of turn")
        return payload

    def _fail(self, message: str):
        """Record the failure, stop every worker (some may wait in a collective for the dead one), raise."""
        if self._error is None:
            self._error = message
            log.error("%s; stopping the other workers", message.splitlines()[0])
        _kill(self.workers)
        raise WorkerError(self._error)


def _launch(spec: WorkerSpec, released: threading.Event) -> list[WorkerProcess]:
    """Start the workers from a thread that lives until `released`: they die with it (PR_SET_PDEATHSIG),
    so it must outlive them, whichever thread built the engine."""
    started: list[WorkerProcess] = []
    errors: list[BaseException] = []
    ready = threading.Event()

    def run() -> None:
        try:
            started.extend(_start_worker(spec, rank) for rank in range(spec.tp_size))
        except BaseException as e:  # noqa: BLE001 (handed to the caller)
            errors.append(e)
        ready.set()
        released.wait()

    threading.Thread(target=run, name="tp-workers", daemon=True).start()
    ready.wait()
    if errors:
        _kill(started)
        released.set()
        raise errors[0]
    return started


def _start_worker(spec: WorkerSpec, rank: int) -> WorkerProcess:
    ours, theirs = socket.socketpair()
    env = worker_env(dict(os.environ), cpu_threads_per_rank(spec.tp_size))
    # The workers import engine_service as this process does (as multiprocessing's spawn would).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    fd = theirs.fileno()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine_service.worker.tp_worker", str(fd), str(rank), str(os.getpid())],
        pass_fds=[fd],
        env=env,
    )
    theirs.close()
    conn = Connection(ours.detach())
    conn.send(spec)
    return WorkerProcess(rank, proc, conn)


def _kill(workers: list[WorkerProcess]) -> None:
    for w in workers:
        if w.proc.poll() is None:
            w.proc.kill()
    for w in workers:
        w.proc.wait()


def _stop_workers(workers: list[WorkerProcess], released: threading.Event) -> None:
    """Ask every worker to leave the group and exit; kill those that have not within STOP_TIMEOUT_S."""
    for w in workers:
        try:
            w.conn.send(("stop",))
        except OSError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for w in workers:
        try:
            w.proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("tensor-parallel worker %d did not stop: killing it", w.rank)
    _kill(workers)
    for w in workers:
        w.conn.close()
    released.set()
