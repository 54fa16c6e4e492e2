"""The vLLM peer: `python -m pagoda.bench.peer_vllm JOB.json OUT.json`, run by `pagoda bench throughput
--peer vllm` in a process of its own (with the folder --vllm-site names first on its path, if any).

It runs vLLM the way `vllm bench throughput` does (dummy weights, no tokenizer, FLASH_ATTN, token-id
prompts, one timed `generate` after a short warm-up), on the workload the parent describes, and measures
the same decode-step probe as Pagoda.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pagoda.bench import workloads
from pagoda.bench.peers import PeerJob, write_result
from pagoda.bench.report import engine_result


def main(argv: list[str] | None = None) -> int:
    job_path, out_path = argv if argv is not None else sys.argv[1:]
    job = PeerJob.from_json(Path(job_path).read_text())
    spec = job.spec

    import torch
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    kwargs = dict(
        model=job.model_dir,
        load_format="dummy",
        skip_tokenizer_init=True,
        dtype=job.dtype,
        max_model_len=job.max_model_len,
        gpu_memory_utilization=job.gpu_memory_utilization,
        enable_prefix_caching=job.prefix_caching,
        attention_backend="FLASH_ATTN",
        seed=job.seed,
    )
    if job.tensor_parallel_size > 1:
        kwargs["tensor_parallel_size"] = job.tensor_parallel_size
    if job.quantization is not None:
        kwargs["quantization"] = job.quantization
    if job.kv_cache_dtype != "auto":
        kwargs["kv_cache_dtype"] = job.kv_cache_dtype
    if job.max_num_seqs:
        kwargs["max_num_seqs"] = job.max_num_seqs
    if job.max_num_batched_tokens:
        kwargs["max_num_batched_tokens"] = job.max_num_batched_tokens
    started = time.perf_counter()
    llm = LLM(**kwargs)
    startup_s = time.perf_counter() - started

    def generate(prompts: list[list[int]], max_tokens: list[int]):
        params = [
            SamplingParams(
                n=1, temperature=job.temperature, top_p=1.0, ignore_eos=True, max_tokens=m, detokenize=False
            )
            for m in max_tokens
        ]
        inputs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
        t0 = time.perf_counter()
        outs = llm.generate(inputs, params, use_tqdm=False)
        return time.perf_counter() - t0, outs

    requests = workloads.build(spec, job.vocab_size)[: job.num_prompts]
    generate(workloads.warmup_prompts(8, spec.input_len, job.vocab_size), [min(16, spec.output_len)] * 8)
    elapsed_s, outs = generate([r.prompt_token_ids for r in requests], [r.max_tokens for r in requests])

    # Per-request times exist only with log stats on, which vLLM's LLM turns off by default; we keep its
    # default so that its throughput is the figure its own benchmark reports.
    ttft, tpot = [], []
    for o in outs:
        m, n = o.metrics, len(o.outputs[0].token_ids)
        if m is None or not getattr(m, "first_token_ts", 0):
            continue
        ttft.append(m.first_token_latency)
        if n > 1:
            tpot.append((m.last_token_ts - m.first_token_ts) / (n - 1))

    decode = workloads.probe_decode_steps(
        lambda p, m: generate(p, [m] * len(p))[0],
        job.decode_batch_sizes,
        job.decode_tokens,
        spec.input_len,
        job.vocab_size,
    )
    sched = llm.llm_engine.vllm_config.scheduler_config
    write_result(
        out_path,
        engine_result(
            engine=f"vllm {vllm.__version__}",
            startup_s=startup_s,
            elapsed_s=elapsed_s,
            num_prompts=len(requests),
            num_prompt_tokens=sum(len(o.prompt_token_ids) for o in outs),
            num_output_tokens=sum(len(c.token_ids) for o in outs for c in o.outputs),
            max_num_seqs=sched.max_num_seqs,
            max_num_batched_tokens=sched.max_num_batched_tokens,
            ttft_s=ttft,
            tpot_s=tpot,
            decode_step_ms=decode,
            torch=torch.__version__,
            settings={"attention_backend": "FLASH_ATTN", "cuda_graphs": True, "log_stats": False},
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
