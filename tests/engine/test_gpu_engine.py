"""The engine on a GPU: Triton kernels and CUDA graphs give the CPU path's tokens (float32), and bf16 stays
close to transformers' float32 logits. Run with `make test-gpu` on the GPU machine."""

from __future__ import annotations

import random

import pytest
import torch

from engine_service import LLM, SamplingParams

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def prompts(lengths, seed=0, vocab=256):
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=0)


def tokens(llm: LLM, ps) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=ps, sampling_params=GREEDY)]


@needs_cuda
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_gpu_float32_equals_cpu(tiny_models, arch):
    folder, _ = tiny_models[arch]
    ps = prompts([1, 7, 16, 17, 100, 300], seed=1)
    cpu = tokens(LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=128), ps)
    eager = LLM(str(folder), device="cuda", dtype="float32", num_kv_blocks=128, enforce_eager=True)
    graphs = LLM(str(folder), device="cuda", dtype="float32", num_kv_blocks=128, max_num_seqs=16)
    assert graphs.engine.runner.graphs is not None
    assert tokens(eager, ps) == cpu
    assert tokens(graphs, ps) == cpu


@needs_cuda
def test_gpu_chunked_prefill_prefix_hits_and_preemption(tiny_models):
    folder, _ = tiny_models["llama"]
    ps = prompts([40, 33, 57, 21], seed=2)
    shared = [ps[0][:32] + p[:5] for p in ps]
    cpu = tokens(LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=256), ps + shared)
    gpu = LLM(
        str(folder),
        device="cuda",
        dtype="float32",
        num_kv_blocks=12,
        block_size=16,
        max_num_batched_tokens=24,
        max_num_seqs=8,
    )
    assert tokens(gpu, ps + shared) == cpu
    assert gpu.engine.scheduler.num_preemptions > 0
    assert gpu.engine.block_manager.num_hit_tokens > 0


@needs_cuda
def test_bf16_logprobs_close_to_transformers_fp32(tiny_models):
    folder, model = tiny_models["llama"]
    ps = prompts([5, 64, 200], seed=3)
    llm = LLM(str(folder), device="cuda", dtype="bfloat16", num_kv_blocks=128)
    outs = llm.generate(
        prompt_token_ids=ps, sampling_params=SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    )
    for p, out in zip(ps, outs, strict=True):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([p])).logits[0, -1].float(), -1)
        for token_id, logprob in out.outputs[0].logprobs[0].top:
            assert abs(logprob - ref[token_id].item()) < 0.05  # bf16 weights and activations: ~1e-2 relative


@needs_cuda
def test_gpu_sampling_options_run(tiny_models):
    folder, _ = tiny_models["llama"]
    llm = LLM(str(folder), device="cuda", dtype="bfloat16", num_kv_blocks=128)
    params = SamplingParams(
        n=3,
        max_tokens=16,
        temperature=0.8,
        top_k=20,
        top_p=0.9,
        min_p=0.05,
        presence_penalty=0.5,
        frequency_penalty=0.5,
        repetition_penalty=1.2,
        logit_bias={5: 2.0},
        seed=11,
        min_tokens=4,
        logprobs=3,
        ignore_eos=True,
    )
    a = llm.generate(prompt_token_ids=[[3, 4, 5]], sampling_params=params)[0]
    b = llm.generate(prompt_token_ids=[[3, 4, 5], [7, 8]], sampling_params=params)[0]
    assert [o.token_ids for o in a.outputs] == [o.token_ids for o in b.outputs]  # seeded: batch-independent
    assert all(len(o.token_ids) == 16 for o in a.outputs)


@needs_cuda
def test_pdl_changes_when_kernels_start_not_what_they_compute(tiny_models):
    """Programmatic dependent launch (on by default on sm_90+) gives the tokens and logprobs of plain
    stream order, bit for bit, in bf16, eagerly and from CUDA graphs."""
    folder, _ = tiny_models["llama"]
    ps = prompts([1, 7, 16, 17, 100, 300], seed=5)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True, logprobs=2)

    def run(pdl: bool, eager: bool):
        llm = LLM(str(folder), device="cuda", dtype="bfloat16", num_kv_blocks=128, max_num_seqs=16,
                  enforce_eager=eager, pdl=pdl)  # fmt: skip
        outs = llm.generate(prompt_token_ids=ps, sampling_params=params)
        llm.engine.shutdown()
        return [(o.outputs[0].token_ids, [lp.logprob for lp in o.outputs[0].logprobs]) for o in outs]

    for eager in (True, False):
        assert run(pdl=True, eager=eager) == run(pdl=False, eager=eager)
