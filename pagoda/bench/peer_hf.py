"""The Hugging Face transformers peer: `python -m pagoda.bench.peer_hf JOB.json OUT.json`, run by
`pagoda bench throughput --peer hf` in a process of its own, once per mode:

    static  `model.generate` on batches of `batch_size` prompts (left-padded) with a static KV cache; every
            request of a batch generates the batch's largest max_tokens (only the requested tokens count)
    cb      transformers' continuous batching (`continuous_batching_context_manager`, what `generate_batch`
            runs), one request per prompt with its own max_new_tokens; the manager's warm-up (CUDA-graph
            capture) is start-up, not timed

The model is built from config.json with random bf16 weights on the GPU (`from_config`), the peer's
equivalent of `load_format="dummy"`. EOS never stops a sequence: eos_token_id is unset (static) or -1 (cb).
Sampling as for every engine: temperature 1.0 over the whole vocabulary (top_k 0, top_p 1).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from pagoda.bench import workloads
from pagoda.bench.peers import PeerJob, write_result
from pagoda.bench.report import engine_result

API = {"static": "generate", "cb": "generate_batch"}


def build_model(job: PeerJob):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(job.model_dir)
    with torch.device(job.device):
        model = AutoModelForCausalLM.from_config(
            config, dtype=getattr(torch, job.dtype), attn_implementation="sdpa"
        )
    model.eval()
    model.generation_config.eos_token_id = None  # generate() fills unset values from here: no EOS at all
    return model


def generation_config(job: PeerJob, max_new_tokens: int, **overrides):
    from transformers import GenerationConfig

    sampling = (
        dict(do_sample=True, temperature=job.temperature, top_k=0, top_p=1.0)
        if job.temperature > 0
        else dict(do_sample=False)
    )
    return GenerationConfig(max_new_tokens=max_new_tokens, pad_token_id=0, **sampling, **overrides)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_static(job: PeerJob, model, requests: list[workloads.Request]) -> dict:
    import torch

    # disable_compile: with a static cache generate() would torch.compile the forward on its own, which
    # takes minutes for a new shape; eager is the figure a user gets without tuning.
    def generate(prompts: list[list[int]], max_new_tokens: int) -> float:
        width = max(len(p) for p in prompts)
        ids = torch.zeros(len(prompts), width, dtype=torch.long)  # [B, width], left-padded
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        config = generation_config(job, max_new_tokens, cache_implementation="static", disable_compile=True)
        _sync(job.device)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                input_ids=ids.to(job.device), attention_mask=mask.to(job.device), generation_config=config
            )
        _sync(job.device)
        return time.perf_counter() - t0

    spec = job.spec
    generate(
        workloads.warmup_prompts(min(8, job.batch_size), spec.input_len, job.vocab_size),
        min(16, spec.output_len),
    )
    elapsed_s, generated = 0.0, 0
    for start in range(0, len(requests), job.batch_size):
        batch = requests[start : start + job.batch_size]
        longest = max(r.max_tokens for r in batch)
        elapsed_s += generate([r.prompt_token_ids for r in batch], longest)
        generated += longest * len(batch)
    decode = workloads.probe_decode_steps(
        generate, job.decode_batch_sizes, job.decode_tokens, spec.input_len, job.vocab_size
    )
    return dict(
        elapsed_s=elapsed_s,
        decode_step_ms=decode,
        max_num_seqs=job.batch_size,
        max_num_batched_tokens=None,
        generated_tokens=generated,
        ttft_s=None,
        tpot_s=None,
        settings={
            "cache": "static",
            "batch_size": job.batch_size,
            "compile": False,
            "attn_implementation": model.config._attn_implementation,
        },
    )


def run_continuous(job: PeerJob, model, requests: list[workloads.Request]) -> dict:
    from transformers import ContinuousBatchingConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    hints = WorkloadHints(
        max_prompt_length=max(len(r.prompt_token_ids) for r in requests),
        max_generated_length=max(r.max_tokens for r in requests),
        num_requests=len(requests),
    )
    config = generation_config(job, hints.max_generated_length, eos_token_id=-1)
    # block sharing is transformers' prefix caching
    cb_config = ContinuousBatchingConfig(allow_block_sharing=job.prefix_caching)
    started = time.perf_counter()
    with model.continuous_batching_context_manager(
        generation_config=config,
        continuous_batching_config=cb_config,
        block=True,
        timeout=5,
        workload_hints=hints,
    ) as manager:
        startup_s = time.perf_counter() - started  # manager, paged cache, CUDA-graph warm-up
        t0 = time.perf_counter()
        ids = [
            manager.add_request(
                input_ids=r.prompt_token_ids,
                max_new_tokens=r.max_tokens,
                record_timestamps=True,
                eos_token_id=-1,
            )
            for r in requests
        ]
        results = {}
        while len(results) < len(ids):
            result = manager.get_result(timeout=1)
            if result is not None and result.is_finished():
                results[result.request_id] = result
            elif result is None and not manager.is_running():
                raise RuntimeError(
                    f"continuous batching stopped with {len(ids) - len(results)} requests left"
                )
        elapsed_s = time.perf_counter() - t0
        attn = model.config._attn_implementation  # the manager's paged one; put back on exit
    failed = [r.error for r in results.values() if r.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} requests failed, first: {failed[0]}")
    ttft, tpot = [], []
    for r in results.values():
        stamps = r.timestamps or []
        if stamps:
            ttft.append(stamps[0] - t0)
        if len(stamps) > 1:
            tpot.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
    generated = sum(len(r.generated_tokens) for r in results.values())
    return dict(
        elapsed_s=elapsed_s,
        startup_extra_s=startup_s,
        decode_step_ms={},
        max_num_seqs=None,
        max_num_batched_tokens=None,
        generated_tokens=generated,
        ttft_s=ttft,
        tpot_s=tpot,
        settings={
            "api": "continuous_batching_context_manager",
            "block_sharing": job.prefix_caching,
            "attn_implementation": attn,
        },
    )


def main(argv: list[str] | None = None) -> int:
    job_path, out_path = argv if argv is not None else sys.argv[1:]
    job = PeerJob.from_json(Path(job_path).read_text())
    if job.mode not in API:
        raise SystemExit(f"peer_hf: mode must be static or cb, got {job.mode!r}")
    import torch
    import transformers

    requests = workloads.build(job.spec, job.vocab_size)[: job.num_prompts]
    started = time.perf_counter()
    model = build_model(job)
    _sync(job.device)
    startup_s = time.perf_counter() - started
    run = run_static if job.mode == "static" else run_continuous
    figures = run(job, model, requests)
    startup_s += figures.pop("startup_extra_s", 0.0)
    write_result(
        out_path,
        engine_result(
            engine=f"transformers {transformers.__version__} ({API[job.mode]})",
            startup_s=startup_s,
            num_prompts=len(requests),
            num_prompt_tokens=sum(len(r.prompt_token_ids) for r in requests),
            num_output_tokens=sum(r.max_tokens for r in requests),
            torch=torch.__version__,
            **figures,
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
