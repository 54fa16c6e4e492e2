"""FP8 (e4m3) KV cache on the torch path: values stored as k / k_scale, read back times the scale; half
the bytes of a 16-bit cache per token, so twice the blocks in the same memory."""

from __future__ import annotations

import logging

import torch
from test_parity_hf import prompts_of

from engine_service import LLM, SamplingParams
from engine_service.ops import torch_ops

FP8 = torch.float8_e4m3fn


def test_fp8_cache_reads_back_what_a_float_cache_of_its_values_would():
    torch.manual_seed(0)
    heads, kv_heads, dim, block = 4, 2, 16, 4
    k, v = torch.randn(11, kv_heads, dim) * 3, torch.randn(11, kv_heads, dim)
    q = torch.randn(11, heads, dim)
    slots = torch.randperm(16)[:11]
    k_scale, v_scale = 0.5, 2.0
    fp8 = [torch.zeros(4, block, kv_heads, dim, dtype=FP8) for _ in range(2)]
    torch_ops.write_kv_cache(k, v, *fp8, slots, k_scale, v_scale)
    # The float cache holds exactly what the fp8 one means: e4m3(x / scale) * scale.
    ref = [torch.zeros(4, block, kv_heads, dim) for _ in range(2)]
    rounded_k = (k / k_scale).to(FP8).float() * k_scale
    rounded_v = (v / v_scale).to(FP8).float() * v_scale
    torch_ops.write_kv_cache(rounded_k, rounded_v, *ref, slots)
    assert (fp8[0].float() * k_scale - ref[0]).abs().max() == 0
    meta = (torch.tensor([0, 4, 11], dtype=torch.int32), torch.tensor([6, 7], dtype=torch.int32))
    tables = torch.arange(8, dtype=torch.int32).view(2, 4) % 4  # both sequences read all four blocks
    got = torch_ops.paged_attention(q, *fp8, *meta, tables, 0.25, k_scale=k_scale, v_scale=v_scale)
    want = torch_ops.paged_attention(q, *ref, *meta, tables, 0.25)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert (rounded_k - k).abs().max() > 0  # the cache really rounded


def test_fp8_kv_cache_holds_twice_the_blocks_and_stays_close(tiny_llama, caplog):
    common = dict(device="cpu", dtype="bfloat16", cpu_kv_cache_gib=0.001)
    base = LLM(str(tiny_llama), **common)
    with caplog.at_level(logging.INFO, logger="engine_service.engine.engine"):
        fp8 = LLM(str(tiny_llama), kv_cache_dtype="fp8", **common)
    assert fp8.engine.runner.kv_caches[0][0].dtype == FP8
    assert fp8.engine.model_info.num_kv_blocks == 2 * base.engine.model_info.num_kv_blocks
    assert any("KV cache (fp8 e4m3" in r.getMessage() for r in caplog.records)
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    prompts = prompts_of([30, 45], seed=9)
    for a, b in zip(
        base.generate(prompt_token_ids=prompts, sampling_params=params),
        fp8.generate(prompt_token_ids=prompts, sampling_params=params),
        strict=True,
    ):
        top_a, top_b = dict(a.outputs[0].logprobs[0].top), dict(b.outputs[0].logprobs[0].top)
        shared = set(top_a) & set(top_b)
        assert len(shared) >= 3
        assert max(abs(top_a[t] - top_b[t]) for t in shared) < 0.1


def test_fp8_kv_cache_changes_logits_a_little(tiny_llama):
    """Not a no-op: the logprobs move (rounding to e4m3), by little."""
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=1)
    prompt = prompts_of([40], seed=1)
    a = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=16)
    b = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=16, kv_cache_dtype="fp8")
    la = a.generate(prompt_token_ids=prompt, sampling_params=params)[0].outputs[0].logprobs[0].logprob
    lb = b.generate(prompt_token_ids=prompt, sampling_params=params)[0].outputs[0].logprobs[0].logprob
    assert 0 < abs(la - lb) < 0.05


def test_cli_flags_reach_the_engine_config(tiny_llama):
    from engine_service.server.main import build_config, parse_args

    args = parse_args(["--model", str(tiny_llama), "--quantization", "fp8", "--kv-cache-dtype", "fp8"])
    engine = build_config(args).engine
    assert (engine.quantization, engine.kv_cache_dtype) == ("fp8", "fp8")
    engine = build_config(parse_args(["--model", str(tiny_llama)])).engine
    assert (engine.quantization, engine.kv_cache_dtype) == (None, "auto")
