"""The roofline arithmetic against numbers worked out by hand."""

from __future__ import annotations

import pytest

from pagoda.bench.roofline import (
    Ceilings,
    ModelDims,
    RequestWork,
    count_work,
    decode_step_floor,
    efficiency,
    time_floor,
)
from pagoda.bench.shapes import SHAPES

# 2 layers, hidden 8, 2 heads + 1 KV head of 4, MLP 16, vocabulary 32, tied embeddings.
TOY = ModelDims(
    num_layers=2,
    hidden=8,
    num_heads=2,
    num_kv_heads=1,
    head_dim=4,
    intermediate=16,
    vocab=32,
    tied=True,
    qkv_bias=False,
)
SLOW_CARD = Ceilings(matmul_flops_per_s=1000.0, copy_bytes_per_s=100.0)


def test_toy_parameter_counts():
    # q 8*8 + k,v 2*8*4 + o 8*8 + gate/up/down 3*8*16 = 64 + 64 + 64 + 384
    assert TOY.layer_matmul_params == 576
    assert TOY.layer_params == 576 + 16  # two RMSNorm weights of 8
    assert TOY.num_params == 2 * 592 + 8 + 32 * 8  # layers, final norm, the tied embedding once
    assert TOY.step_weight_params == 1448  # the lm_head side of the vocabulary matrix
    untied = ModelDims(**{**TOY.__dict__, "tied": False})
    assert untied.num_params == 1448 + 256 and untied.step_weight_params == 1448  # embedding gather not read
    assert TOY.kv_bytes_per_token(2) == 2 * 2 * 1 * 4 * 2  # K and V, 2 layers, 1 head of 4, bf16
    biased = ModelDims(**{**TOY.__dict__, "qkv_bias": True})
    assert biased.layer_params == 592 + (2 + 2 * 1) * 4


@pytest.mark.parametrize(
    ("shape", "params", "step_params"),
    [
        ("llama-1b", 1_235_814_400, 1_235_814_400),  # Llama-3.2-1B's model card figure
        ("llama-8b", 8_030_261_248, 8_030_261_248 - 128256 * 4096),  # Llama-3.1-8B, input embedding not read
        ("qwen-0.5b", 494_032_768, 494_032_768),  # Qwen2.5-0.5B (with q/k/v biases)
    ],
)
def test_real_shapes_match_the_released_models(shape, params, step_params):
    dims = ModelDims.from_config(SHAPES[shape])
    assert dims.num_params == params
    assert dims.step_weight_params == step_params


def test_one_request_by_hand():
    # prompt 4, output 3: positions 0..5 go through the model (the 3rd output is never fed back)
    work = count_work(
        TOY, [RequestWork(prompt_len=4, output_len=3)], max_num_seqs=256, max_num_batched_tokens=8192
    )
    linear = 2 * 2 * 576 * 6  # 2 FLOPs x 2 layers x 576 weights x 6 tokens = 13824
    lm_head = 2 * 256 * 3  # logits only where a token is sampled: 1536
    attention = 4 * 2 * 2 * 4 * (1 + 2 + 3 + 4 + 5 + 6)  # position p attends to p + 1 keys: 1344
    assert work.flops == linear + lm_head + attention == 16704
    assert work.num_steps == 3  # one prefill step (yields output 1) + two decode steps
    assert work.weight_bytes == 3 * 1448 * 2
    assert work.kv_read_bytes == (5 + 6) * 32  # decode tokens at positions 4 and 5 read 5 and 6 entries
    assert (work.num_prompt_tokens, work.num_output_tokens) == (4, 3)


def test_cached_prefix_is_read_not_computed():
    work = count_work(TOY, [RequestWork(4, 3, cached_len=2)], max_num_seqs=256, max_num_batched_tokens=8192)
    assert work.flops == 2 * 2 * 576 * 4 + 2 * 256 * 3 + 4 * 2 * 2 * 4 * (3 + 4 + 5 + 6)  # positions 2..5
    assert work.kv_read_bytes == (2 + 5 + 6) * 32  # the prefill reads the 2 cached entries once


def test_steps_are_bounded_by_the_batch_limits():
    requests = [RequestWork(4, 3)] * 10  # 30 request-steps, 60 tokens
    assert (
        count_work(TOY, requests, max_num_seqs=4, max_num_batched_tokens=8192).num_steps == 8
    )  # ceil(30 / 4)
    assert count_work(TOY, requests, max_num_seqs=4, max_num_batched_tokens=7).num_steps == 9  # ceil(60 / 7)
    assert count_work(TOY, requests, max_num_seqs=256, max_num_batched_tokens=8192).num_steps == 3  # longest


def test_floor_and_efficiency():
    work = count_work(TOY, [RequestWork(4, 3)], max_num_seqs=256, max_num_batched_tokens=8192)
    floor = time_floor(work, SLOW_CARD)
    assert floor.compute_s == pytest.approx(16.704)
    assert floor.memory_s == pytest.approx((8688 + 352) / 100)
    assert floor.seconds == floor.memory_s
    assert efficiency(floor, 2 * floor.seconds) == pytest.approx(0.5)


def test_decode_step_floor_by_hand():
    floor = decode_step_floor(TOY, batch=2, context_len=5, ceilings=SLOW_CARD)
    # per sequence: 2 x 2 x 576 (layers) + 2 x 256 (lm_head) + 64 x 6 keys = 3200 FLOPs
    assert floor.compute_s == pytest.approx(2 * 3200 / 1000)
    assert floor.memory_s == pytest.approx((1448 * 2 + 2 * 6 * 32) / 100)  # weights + both sequences' KV


def test_llama_1b_fixed_workload_on_an_h200():
    """The issue's default workload against FACTS.md's H200 ceilings: about 2.1 s, compute-bound."""
    dims = ModelDims.from_config(SHAPES["llama-1b"])
    work = count_work(dims, [RequestWork(512, 256)] * 1000, max_num_seqs=256, max_num_batched_tokens=8192)
    per_token = 2 * 16 * 60_817_408  # 16 layers of q 2048x2048, k/v 2048x512, o, MLP 3x2048x8192
    expected = 1000 * (767 * per_token + 256 * 2 * 128256 * 2048 + 4 * 16 * 32 * 64 * (767 * 768 // 2))
    assert work.flops == expected
    assert work.num_steps == 1000  # 256,000 request-steps at 256 a step
    floor = time_floor(work, Ceilings(790e12, 4.3e12))
    assert floor.seconds == pytest.approx(2.109, abs=1e-3)
    assert floor.memory_s == pytest.approx((1000 * 2 * 1_235_814_400 + work.kv_read_bytes) / 4.3e12)
    assert decode_step_floor(dims, 1, 512, Ceilings(790e12, 4.3e12)).seconds * 1e3 == pytest.approx(
        0.579, abs=1e-3
    )


def test_bad_requests_are_refused():
    with pytest.raises(ValueError):
        count_work(TOY, [RequestWork(4, 0)], 256, 8192)
    with pytest.raises(ValueError):
        count_work(TOY, [RequestWork(4, 3, cached_len=4)], 256, 8192)
    with pytest.raises(ValueError):
        count_work(TOY, [], 256, 8192)


@pytest.mark.parametrize("base", ["tiny", "qwen-0.5b"])
def test_parameter_count_matches_transformers(base):
    """The count formula against a real model built by transformers (shrunk, so it builds in milliseconds)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(
        SHAPES[base],
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        vocab_size=300,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    )
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    assert (
        sum(p.numel() for p in model.parameters()) == ModelDims.from_config(SHAPES[base] | config).num_params
    )
