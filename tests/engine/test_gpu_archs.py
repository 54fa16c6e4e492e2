"""The newer architectures and FP8 on a GPU (run with `make test-gpu` on the GPU machine): Triton kernels
and CUDA graphs give the CPU path's tokens in float32; FP8 weights (real W8A8 GEMMs there) and the FP8 KV
cache stay close to the float model."""

from __future__ import annotations

import pytest
import torch
from arch_models import CONFIGS, make_arch_model
from test_fp8_checkpoints import LAYOUTS, write_fp8_checkpoint
from test_parity_hf import prompts_of

from engine_service import LLM, SamplingParams

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
TOP5 = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)


def tokens(llm: LLM, ps) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=ps, sampling_params=GREEDY)]


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_gpu_float32_equals_cpu(tmp_path, arch):
    make_arch_model(tmp_path, arch)
    ps = prompts_of([1, 7, 16, 17, 30, 45], seed=1)
    common = dict(dtype="float32", num_kv_blocks=128, max_model_len=64)
    cpu = tokens(LLM(str(tmp_path), device="cpu", **common), ps)
    eager = LLM(str(tmp_path), device="cuda", enforce_eager=True, **common)
    graphs = LLM(str(tmp_path), device="cuda", max_num_seqs=16, **common)
    assert graphs.engine.runner.graphs is not None
    assert tokens(eager, ps) == cpu
    assert tokens(graphs, ps) == cpu


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_gpu_sliding_group_from_the_profiled_budget_equals_cpu(tmp_path, arch):
    """A hybrid model on the GPU: the profiled budget split between the KV-cache groups, the sliding group's
    table through the Triton kernels and the decode graphs' static buffers, far past the window (8 keys,
    blocks of 4): the CPU path's tokens."""
    make_arch_model(tmp_path, arch)
    ps = prompts_of([3, 21, 40], seed=4)
    params = SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)
    common = dict(dtype="float32", block_size=4, max_model_len=128, max_num_seqs=8)
    cpu = LLM(str(tmp_path), device="cpu", num_kv_blocks=128, **common).generate(
        prompt_token_ids=ps, sampling_params=params
    )
    gpu = LLM(str(tmp_path), device="cuda", gpu_memory_utilization=0.3, **common)
    bm = gpu.engine.block_manager
    assert gpu.engine.runner.graphs is not None
    assert (
        bm.sliding is not None and bm.sliding.num_blocks < bm.num_blocks
    )  # the saving went to the global group
    got = gpu.generate(prompt_token_ids=ps, sampling_params=params)
    assert [o.outputs[0].token_ids for o in got] == [o.outputs[0].token_ids for o in cpu]
    bm.check_all_free()


@pytest.mark.parametrize("arch", ["gemma2", "qwen3_moe", "phi3"])
def test_gpu_bf16_close_to_transformers(tmp_path, arch):
    model = make_arch_model(tmp_path, arch)
    ps = prompts_of([5, 40], seed=3)
    llm = LLM(str(tmp_path), device="cuda", dtype="bfloat16", num_kv_blocks=128, max_model_len=64)
    check_top5(llm, model, ps, tolerance=0.1)


def check_top5(llm: LLM, model, ps, tolerance: float) -> None:
    for p, out in zip(ps, llm.generate(prompt_token_ids=ps, sampling_params=TOP5), strict=True):
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([p])).logits[0, -1].float(), -1)
        for token_id, logprob in out.outputs[0].logprobs[0].top:
            assert abs(logprob - ref[token_id].item()) < tolerance


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_fp8_checkpoint_runs_w8a8_close_to_its_dequantized_model(tmp_path, layout):
    reference = write_fp8_checkpoint(tmp_path, layout)
    llm = LLM(str(tmp_path), device="cuda", dtype="bfloat16", num_kv_blocks=128)
    layer = llm.engine.runner.model.model.layers[0].self_attn.qkv_proj
    assert layer.weight.dtype == torch.float8_e4m3fn  # kept in fp8 on the GPU
    check_top5(llm, reference, prompts_of([3, 17, 60], seed=2), tolerance=0.15)


@pytest.mark.parametrize("layout", ["fp8-block", "compressed-tensors-channel"])
def test_fp8_moe_checkpoint_close_to_its_dequantized_model(tmp_path, layout):
    """FP8 experts dequantized on load into the fused MoE kernel's stacked weights; attention stays FP8."""
    reference = write_fp8_checkpoint(tmp_path, layout, moe=True)
    llm = LLM(str(tmp_path), device="cuda", dtype="bfloat16", num_kv_blocks=128)
    layers = llm.engine.runner.model.model.layers
    assert layers[0].self_attn.qkv_proj.weight.dtype == torch.float8_e4m3fn
    assert layers[0].mlp.experts.w13_weight.dtype == torch.bfloat16
    check_top5(llm, reference, prompts_of([3, 17, 60], seed=2), tolerance=0.15)


def test_quantization_fp8_on_gpu_and_fp8_kv_cache(tiny_models):
    folder, model = tiny_models["llama"]
    ps = prompts_of([5, 64, 200], seed=4)
    llm = LLM(str(folder), device="cuda", dtype="bfloat16", num_kv_blocks=128, quantization="fp8")
    check_top5(llm, model, ps, tolerance=0.15)
    kv = LLM(str(folder), device="cuda", dtype="bfloat16", num_kv_blocks=128, kv_cache_dtype="fp8")
    assert kv.engine.runner.kv_caches[0][0].dtype == torch.float8_e4m3fn
    check_top5(kv, model, ps, tolerance=0.15)
