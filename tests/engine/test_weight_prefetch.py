"""The decode weight-prefetch chain (layers/weight_prefetch.py): each product names the one the forward
pass runs next, capped in bytes; on a GPU the prefetch changes no token (run with `make test-gpu`)."""

from __future__ import annotations

import pytest
import torch

from engine_service import LLM, SamplingParams
from engine_service.layers.attention import AttentionMetadata
from engine_service.layers.linear import ColumnParallelLinear, RowParallelLinear
from engine_service.layers.weight_prefetch import chain_weight_prefetch
from engine_service.model_config import ModelConfig
from engine_service.models.registry import model_class


def build(folder):
    config = ModelConfig.from_dir(str(folder))
    return model_class(config.architecture)(config.hf_config)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_decode_products_are_in_forward_order(tiny_models, arch):
    """decode_products lists every linear layer in the order a forward pass calls them, then the LM head."""
    model = build(tiny_models[arch][0])
    called = []
    for module in model.modules():
        if isinstance(module, ColumnParallelLinear | RowParallelLinear):
            module.register_forward_hook(lambda m, args, out: called.append(m))
    T = 3
    kv = [(torch.zeros(4, 16, model.args.num_kv_heads, model.args.head_dim),) * 2 for _ in model.model.layers]
    meta = AttentionMetadata(
        slot_mapping=torch.arange(T),
        query_start_loc=torch.tensor([0, T], dtype=torch.int32),
        seq_lens=torch.tensor([T], dtype=torch.int32),
        block_tables=torch.zeros(1, 4, dtype=torch.int32),
        max_query_len=T,
        max_seq_len=T,
    )
    with torch.inference_mode():
        model(torch.tensor([5, 6, 7]), torch.arange(T), kv, meta)
    products = model.decode_products()
    assert products[:-1] == called and len(called) == 4 * len(model.model.layers)
    assert products[-1] is model.lm_head


def test_chain_links_each_product_to_the_next_capped(tiny_models):
    model = build(tiny_models["llama"][0])
    products = model.decode_products()
    cap = 5000  # bytes: below every weight of the tiny model (the smallest, o_proj, is 64 x 64 x 4)
    assert chain_weight_prefetch(products, cap) == len(products) - 1
    for current, following in zip(products[:-1], products[1:], strict=True):
        weight, nbytes = current.prefetch
        assert weight is following.weight
        assert nbytes == min(cap, weight.numel() * weight.element_size())
    big = 1 << 30  # more than any weight: each link takes the whole next weight
    chain_weight_prefetch(products, big)
    pairs = zip(products[:-1], products[1:], strict=True)
    assert all(p.prefetch[1] == n.weight.numel() * 4 for p, n in pairs)
    assert chain_weight_prefetch(products, 0) == 0
    assert all(p.prefetch is None for p in products[:-1])


def test_cpu_engine_sets_no_chain(tiny_llama):
    """The prefetch is a CUDA instruction: a CPU engine leaves every product without one."""
    llm = LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64, weight_prefetch_mib=16)
    assert all(p.prefetch is None for p in llm.engine.runner.model.decode_products()[:-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_prefetch_changes_no_token(tiny_llama):
    """bf16, decode graphs (batch <= 8 goes through the prefetching GEMV): the same greedy tokens with the
    chain on and off, and the chain set only where asked."""
    greedy = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    prompts = [[3 + (7 * i + j) % 250 for j in range(5 + 9 * i)] for i in range(6)]
    outputs = {}
    for mib in (0, 16):
        llm = LLM(
            str(tiny_llama), device="cuda", dtype="bfloat16", num_kv_blocks=256, weight_prefetch_mib=mib
        )
        chained = [p.prefetch is not None for p in llm.engine.runner.model.decode_products()[:-1]]
        assert all(chained) if mib else not any(chained)
        done = llm.generate(prompt_token_ids=prompts, sampling_params=greedy)
        outputs[mib] = [o.outputs[0].token_ids for o in done]
        llm.engine.shutdown()
    assert outputs[16] == outputs[0]
