"""A tensor-parallel worker: one process per rank, started by MultiProcExecutor.

    python -m engine_service.worker.tp_worker FD RANK PARENT_PID

FD is this worker's end of a socket pair with the driver. The driver sends the WorkerSpec first; the
worker joins the process group, builds its ModelRunner (reading only its slices of the weights) and
answers ("ok", kv_bytes_per_block). Then, until "stop" or the driver's end closes:

    ("call", name, args)   every rank runs ModelRunner.<name>(*args) and answers ("ok", result)
    ("step", (out, mask))  every rank applies the SchedulerOutput's diff to the persistent batch and
                           launches the step (forward pass and sampling, on its device; `mask`, a
                           TokenBitmask or None: the step's grammar masks, for every rank's draw);
                           rank 0 answers ("ok", SampleResult), one answer per step, in order
    ("stop",)              drop the CUDA graphs, leave the process group and exit 0

Rank 0 holds a step's answer while the driver may still send the next step (async scheduling): it
launches that one first and answers after, so the GPU always has the next step queued:

    recv n ▸ launch n ▸ answer n-1 (waits for n-1; n is queued) ▸ next step, or n done? ▸ ...

When step n is done and no step came, it answers at once (the driver is waiting to schedule).

Any failure is answered ("error", traceback) by the rank that hit it, which then exits 1.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from engine_service.core.model_config import ModelConfig
from engine_service.core.scheduler_output import SchedulerOutput
from engine_service.distributed import all_reduce
from engine_service.distributed.group import init_distributed
from engine_service.worker.model_runner import DTYPES, ModelRunner
from engine_service.worker.sampler import PendingSample
from engine_service.worker.token_bitmask import TokenBitmask

log = logging.getLogger(__name__)

CALLS = (
    "profile_num_kv_blocks",
    "allocate_kv_cache",
    "capture_cuda_graphs",
    "start_profile",
    "stop_profile",
    "num_sequences",
)


@dataclass(frozen=True)
class WorkerSpec:
    """What every rank needs to build its shard of the model (sent once, at start)."""

    model: ModelConfig  # parsed once, by the driver
    device: str  # cpu | cuda
    dtype: str  # float32 | bfloat16 | float16
    block_size: int
    load_format: str
    seed: int
    tp_size: int
    store_port: int = 0  # the driver's TCPStore, where the ranks meet
    custom_all_reduce: bool = False  # small all-reduces over symmetric memory (CUDA; see all_reduce.py)
    pdl: bool = True  # programmatic dependent launch of the Triton kernels (sm_90+; ops/triton_pdl.py)
    kv_cache_dtype: str = "auto"  # EngineConfig.kv_cache_dtype
    collective_timeout_s: float = 300.0


class Worker:
    def __init__(self, spec: WorkerSpec, rank: int):
        if spec.device == "cuda":
            torch.cuda.set_device(rank)
            device = torch.device("cuda", rank)
        else:
            device = torch.device("cpu")
        init_distributed(rank, spec.tp_size, spec.store_port, device, spec.collective_timeout_s)
        model_config = spec.model
        if spec.custom_all_reduce:
            all_reduce.install(device, DTYPES[spec.dtype], model_config.hidden_size)
        self.rank = rank
        self.runner = ModelRunner(
            model_config,
            device,
            DTYPES[spec.dtype],
            spec.block_size,
            spec.load_format,
            spec.seed,
            rank,
            spec.tp_size,
            pdl=spec.pdl,
            kv_cache_dtype=spec.kv_cache_dtype,
        )

    def launch(self, step: tuple[SchedulerOutput, TokenBitmask | None]) -> Launched:
        out, mask = step
        grammar_mask = (lambda: mask) if mask is not None else None
        return Launched(self.runner.launch(out, grammar_mask), self.runner.device)

    def call(self, name: str, args: tuple):
        if name not in CALLS:
            raise ValueError(f"unknown worker call {name!r}")
        return getattr(self.runner, name)(*args)


class Launched:
    """A step queued on this rank's device: its sampled tokens, and whether the device has finished it."""

    def __init__(self, pending: PendingSample, device: torch.device):
        self.pending = pending
        self._event = None
        if device.type == "cuda":
            self._event = torch.cuda.Event()
            self._event.record()

    def done(self) -> bool:
        return self._event is None or self._event.query()


def _message_comes_first(conn: Connection, launched: Launched) -> bool:
    """Waits until the driver's next message arrives (True) or the step is done on the device (False).

    A busy wait: a step takes milliseconds, and noticing either event late would idle the GPU or the
    driver for that long.
    """
    while not conn.poll():
        if launched.done():
            return conn.poll()
    return True


def serve(conn: Connection, rank: int) -> int:
    try:
        worker = Worker(conn.recv(), rank)
        conn.send(("ok", worker.runner.kv_bytes_per_block))
        held: Launched | None = None  # rank 0: the newest step, its tokens not sent yet
        frozen = False
        while True:
            if held is not None and not _message_comes_first(conn, held):
                conn.send(("ok", held.pending.result()))
                held = None
                continue
            message = conn.recv()
            kind = message[0]
            if kind == "step":
                if not frozen:  # start-up is over (model, cache, graphs): engine_loop.freeze_startup_objects
                    gc.collect()
                    gc.freeze()
                    frozen = True
                launched = worker.launch(message[1])
                if rank == 0:
                    if held is not None:  # the step before: its tokens, while this one runs
                        conn.send(("ok", held.pending.result()))
                    held = launched
                continue
            if held is not None:  # not expected (calls come before any step), but never lose an answer
                conn.send(("ok", held.pending.result()))
                held = None
            if kind == "call":
                conn.send(("ok", worker.call(message[1], message[2])))
            elif kind == "stop":
                break
            else:
                raise ValueError(f"unknown message {kind!r}")
    except EOFError:  # the driver is gone
        return 1
    except BaseException:  # noqa: BLE001 (whatever stops this rank must reach the driver)
        text = traceback.format_exc()
        log.error("tensor-parallel rank %d failed:\n%s", rank, text)
        try:
            conn.send(("error", text))
        except OSError:
            pass
        return 1
    worker.runner.release_graphs()  # graphs holding NCCL collectives would hang the group's teardown
    dist.destroy_process_group()
    return 0


def _die_with_parent(parent_pid: int) -> None:
    """SIGKILL this worker when the driver dies (Linux), even while it waits in a collective.

    The kernel sends the signal when the driver *thread* that started the worker ends, so the executor
    starts its workers from a thread that lives as long as the executor.
    """
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the driver died before the line above
        os._exit(1)


def main(argv: list[str]) -> int:
    fd, rank, parent_pid = (int(a) for a in argv)
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the driver decides when the workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s tp-rank-{rank} %(name)s: %(message)s"
    )
    return serve(Connection(fd), rank)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
