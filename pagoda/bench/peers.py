"""Running a peer engine (vLLM, Hugging Face transformers) on the same workload, in a subprocess of its own.

Each peer runs alone in a fresh process so that its GPU memory is back before the next engine starts, and so
that its packages (vLLM's come from a separate site folder) never meet Pagoda's. The parent writes a
`PeerJob` as JSON; the worker (`python -m pagoda.bench.peer_vllm JOB OUT`) rebuilds the workload from the
same seed and writes one result dict (`report.engine_result`) to OUT. A peer that fails, times out or
cannot start is an `{"error": ...}` entry, never a crash of the benchmark.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pagoda.bench.workloads import WorkloadSpec

# The folder this code is imported from (a source checkout, or site-packages): first on a subprocess's
# path, so that the engines and peers it starts import the same Pagoda as this process.
IMPORT_ROOT = Path(__file__).resolve().parents[2]


def subprocess_env(*first_on_path: str) -> dict[str, str]:
    """This process's environment with `first_on_path`, then IMPORT_ROOT, ahead of its PYTHONPATH."""
    env = dict(os.environ)
    path = [*first_on_path, str(IMPORT_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(path)
    return env


@dataclass(frozen=True)
class PeerJob:
    model_dir: str
    device: str  # cuda | cpu (HF only: the CPU smoke test)
    workload: dict[str, Any]  # WorkloadSpec.to_dict()
    vocab_size: int
    prefix_caching: bool
    dtype: str
    temperature: float
    max_model_len: int
    gpu_memory_utilization: float
    max_num_seqs: int | None  # None: the peer's own default
    max_num_batched_tokens: int | None
    decode_batch_sizes: tuple[int, ...]
    decode_tokens: tuple[int, int]  # (short, long) outputs of the decode-step probe
    num_prompts: int  # run the first num_prompts requests of the workload
    batch_size: int  # HF static generate: requests per generate() call
    mode: str = ""  # HF: static | cb
    seed: int = 0
    tensor_parallel_size: int = 1  # vLLM
    quantization: str | None = None  # vLLM: fp8 quantizes a 16-bit model on load (HF peers: unquantized)
    kv_cache_dtype: str = "auto"  # vLLM: auto | fp8 (HF peers keep their model's dtype)

    @property
    def spec(self) -> WorkloadSpec:
        return WorkloadSpec(**self.workload)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PeerJob:
        data = json.loads(text)
        data["decode_batch_sizes"] = tuple(data["decode_batch_sizes"])
        data["decode_tokens"] = tuple(data["decode_tokens"])
        return cls(**data)


def run_worker(
    module: str, job: PeerJob, env: dict[str, str], timeout_s: float, log=sys.stderr, extra_args=()
) -> dict[str, Any]:
    """Run `python -m module JOB OUT` and return its result, or {"error": ...} with the log's tail."""
    with tempfile.TemporaryDirectory(prefix="pagoda-peer-") as tmp:
        job_path, out_path, log_path = Path(tmp, "job.json"), Path(tmp, "out.json"), Path(tmp, "log.txt")
        job_path.write_text(job.to_json())
        started = time.perf_counter()
        with open(log_path, "w") as log_file:
            # A session of its own: vLLM starts its engine core as a grandchild, and a peer that times out
            # must give all of its GPU memory back before the next engine starts.
            proc = subprocess.Popen(
                [sys.executable, "-m", module, str(job_path), str(out_path), *extra_args],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=timeout_s)
                failure = None if code == 0 else f"exit status {code}"
            except subprocess.TimeoutExpired:
                failure = f"timed out after {timeout_s:.0f} s"
            _kill_group(proc)
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        print(
            f"--- {module} ({job.mode or 'run'}): {time.perf_counter() - started:.0f} s, last lines:",
            file=log,
        )
        print("\n".join(tail), file=log, flush=True)
        if failure is None and out_path.exists():
            return json.loads(out_path.read_text())
        return {"error": failure or "no result written", "log_tail": "\n".join(tail[-15:])}


def _kill_group(proc: subprocess.Popen) -> None:
    """End what is left of the worker's process group (its own process and anything it started)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def write_result(out_path: str, result: dict[str, Any]) -> None:
    Path(out_path).write_text(json.dumps(result, indent=2))
    print("RESULT", json.dumps(result), flush=True)
