"""Where a decode step's time goes: host (cProfile over engine.step) vs GPU kernels (torch.profiler).

    python3 benchmarks/profile_step.py --shape llama-1b --batch 256 --out $OUT/profile.txt

Fills the batch with `--batch` prompts of `--input-len` tokens, runs until all are decoding, then times
`--steps` decode steps three ways: wall clock per step, cProfile of the host code, and the GPU kernel
time from torch.profiler.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

from engine_service import SamplingParams
from pagoda.bench.shapes import dummy_llm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="llama-1b")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--input-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--out", default="profile.txt")
    args = ap.parse_args()

    llm = dummy_llm(args.shape, max_model_len=args.max_model_len, max_num_seqs=args.batch)
    engine = llm.engine
    params = SamplingParams(max_tokens=1000, temperature=1.0, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    vocab = engine.model_config.vocab_size
    for i in range(args.batch):
        engine.add_request(
            f"p{i}", torch.randint(10, vocab - 10, (args.input_len,), generator=g).tolist(), params
        )
    while engine.scheduler.waiting or any(s.num_output_tokens == 0 for s in engine.scheduler.running):
        engine.step()
    for _ in range(5):
        engine.step()
    torch.cuda.synchronize()

    start = time.perf_counter()
    for _ in range(args.steps):
        engine.step()
    wall = (time.perf_counter() - start) / args.steps * 1e3

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.steps):
        engine.step()
    prof.disable()
    host = io.StringIO()
    pstats.Stats(prof, stream=host).sort_stats("tottime").print_stats(30)

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as tp:
        for _ in range(args.steps):
            engine.step()
        torch.cuda.synchronize()
    kernels = tp.key_averages().table(sort_by="cuda_time_total", row_limit=25)
    gpu_ms = sum(e.device_time_total for e in tp.key_averages()) / 1e3 / args.steps

    report = (
        f"{args.shape} batch {args.batch} ctx ~{args.input_len}: wall {wall:.2f} ms/step, "
        f"GPU kernels {gpu_ms:.2f} ms/step\n\n{kernels}\n\nhost (cProfile, by own time):\n{host.getvalue()}"
    )
    with open(args.out, "w") as f:
        f.write(report)
    print(report[:3000])


if __name__ == "__main__":
    main()
