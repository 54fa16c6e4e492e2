"""Host work per engine step, with the model taken out: what bounds the step loop of a small model.

    python -m benchmarks.host_step [--batch 256] [--steps 300] [--results-dir benchmarks]

On a fast GPU a llama-1b decode step at batch 256 takes ~3 ms of device time, and the engine loop's own
Python work per step is of the same size: whichever is longer sets the pace. This measures the host side
alone, on the CPU: a real Engine (scheduler, block manager, step inputs and block-table rows, sampler
inputs, placeholders, updates) with async scheduling on as on a GPU, serving the tiny shape through a
model registered for the purpose (`register_model`): the tiny Llama whose forward pass and LM head return
zeros. Requests are greedy, so the draw is one argmax of those zeros (the fused sampling kernel is one
launch on a GPU). Each step also pickles its updates (as the engine builds them) and stats, as the gRPC
engine process does for the pipe to its front.

Reports microseconds per step in steady decode at --batch sequences (and per phase: schedule + launch,
collect, pack for the pipe), and the host seconds of the whole fixed workload (1000 × 512 / 256 at
--batch sequences, the gRPC benchmark's shape). One `host_step` row to results.jsonl with --results-dir.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from engine_service.core.config import EngineConfig
from engine_service.core.sampling_params import SamplingParams
from engine_service.engine.engine import Engine
from engine_service.models.llama import LlamaForCausalLM
from engine_service.models.registry import register_model
from pagoda.bench import shapes
from pagoda.bench.results import git_commit, record_result

ARCHITECTURE = "HostStepLlama"


class HostStepLlama(LlamaForCausalLM):
    """The tiny Llama with no work in it: zeros of the right shapes. Its layers stay, unused, for the runner
    to size the KV cache from."""

    def forward(self, input_ids: torch.Tensor, *inputs) -> torch.Tensor:  # [T] -> [T, hidden]
        return torch.zeros(input_ids.shape[0], self.args.hidden_size)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:  # [B, hidden] -> [B, vocab]
        return torch.zeros(hidden.shape[0], self.args.vocab_size)


register_model(ARCHITECTURE, HostStepLlama)


def write_model_dir(path: str) -> None:
    """The tiny shape's folder, its config.json naming the architecture above."""
    shapes.write_model_dir("tiny", path)
    config_file = Path(path, "config.json")
    config = json.loads(config_file.read_text())
    config["architectures"] = [ARCHITECTURE]
    config_file.write_text(json.dumps(config))


def build_engine(model_dir: str, batch: int) -> Engine:
    config = EngineConfig(
        model=model_dir,
        load_format="dummy",
        device="cpu",
        dtype="float32",
        max_num_seqs=batch,
        max_num_batched_tokens=16384,
        num_kv_blocks=batch * 64 + 1024,
        async_scheduling=True,
        enable_prefix_caching=True,
    )
    return Engine(config)


def run_steps(engine: Engine, steps: int | None) -> dict[str, float]:
    """Steps (all of them when `steps` is None); seconds in each phase of the loop."""
    times = {"step": 0.0, "pack": 0.0}
    n = 0
    while engine.has_unfinished() and (steps is None or n < steps):
        t0 = time.perf_counter()
        updates = engine.step_packed()  # as the engine process builds them
        t1 = time.perf_counter()
        pickle.dumps(("step", (updates, engine.stats(), [], None)))
        times["step"] += t1 - t0
        times["pack"] += time.perf_counter() - t1
        n += 1
    times["num_steps"] = n
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=300, help="timed decode steps")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--results-dir", default=None)
    p.add_argument("--commit", default=None)
    args = p.parse_args(argv)
    # The loop is one thread of Python; torch's pool would only add wake-ups (and, on a shared machine,
    # slow-downs of 10x or more) to the zeros above.
    torch.set_num_threads(1)
    vocab = shapes.shape_config("tiny")["vocab_size"]
    with tempfile.TemporaryDirectory() as tmp:
        write_model_dir(tmp)
        engine = build_engine(tmp, args.batch)
        params = SamplingParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
        for i in range(args.batch):
            engine.add_request(f"d{i}", [(i * 7 + j) % vocab for j in range(512)], params)
        run_steps(engine, 40)  # prefill and a few decodes
        decode = run_steps(engine, args.steps)

        engine = build_engine(tmp, args.batch)
        work = SamplingParams(max_tokens=256, temperature=0.0, ignore_eos=True)
        for i in range(args.num_prompts):
            engine.add_request(f"w{i}", [(i * 13 + j) % vocab for j in range(512)], work)
        t0 = time.perf_counter()
        workload = run_steps(engine, None)
        workload_s = time.perf_counter() - t0
    per_step = {k: round(1e6 * v / decode["num_steps"], 1) for k, v in decode.items() if k != "num_steps"}
    record = {
        "kind": "host_step",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "commit": args.commit or git_commit(),
        "batch": args.batch,
        "decode_us_per_step": per_step,
        "decode_us_per_step_total": round(sum(per_step.values()), 1),
        "workload": f"fixed {args.num_prompts}x512/256",
        "workload_host_s": round(workload_s, 3),
        "workload_steps": workload["num_steps"],
    }
    print(json.dumps(record))
    if args.results_dir:
        record_result(record, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
