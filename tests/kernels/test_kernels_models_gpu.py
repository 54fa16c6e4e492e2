"""bf16 and FP8 runs of the newer kernels on a GPU (`make test-gpu`): fp8 casts and bf16 arithmetic are not
reliable in Triton's CPU interpreter, so these only run compiled."""

import pytest
import torch
from kernel_cases import make_paged_batch, rel_err

from engine_service.layers.quantization import fp8
from engine_service.ops import torch_ops
from engine_service.ops import triton_attention as ta
from engine_service.ops.triton_fp8 import fp8_linear, quantize_activations
from engine_service.ops.triton_kv_cache import write_kv_cache
from engine_service.ops.triton_moe import fused_moe

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
FP8 = torch.float8_e4m3fn


def randn(*shape, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randn(shape, generator=g, device="cuda").to(dtype)


@pytest.mark.parametrize("mods", [dict(sliding_window=512), dict(logit_softcap=50.0, sliding_window=4096)])
def test_attention_window_softcap_bf16(mods):
    pairs = [(1, 5000), (1, 600), (700, 700), (300, 2000), (1, 1)]
    batch = make_paged_batch(
        [p[0] for p in pairs], [p[1] for p in pairs], num_heads=16, num_kv_heads=8, head_dim=256,
        block_size=16, dtype=torch.bfloat16, device="cuda",
    )  # fmt: skip
    ref = torch_ops.paged_attention(*batch.args(), 256**-0.5, **mods)
    got = ta.paged_attention(
        *batch.args(), 256**-0.5, max_query_len=batch.max_query_len, max_seq_len=batch.max_seq_len, **mods
    )
    assert rel_err(got, ref) < 2e-2


def test_fp8_kv_cache_write_and_attention():
    pairs = [(1, 3000), (1, 17), (200, 200), (64, 500)]
    batch = make_paged_batch(
        [p[0] for p in pairs], [p[1] for p in pairs], num_heads=32, num_kv_heads=8, head_dim=128,
        block_size=16, dtype=torch.bfloat16, device="cuda",
    )  # fmt: skip
    k_scale, v_scale = 0.7, 1.3
    k_cache = (batch.k_cache.float() / k_scale).to(FP8)
    v_cache = (batch.v_cache.float() / v_scale).to(FP8)
    ref = torch_ops.paged_attention(
        batch.q, k_cache, v_cache, *batch.args()[3:], 0.08, k_scale=k_scale, v_scale=v_scale
    )
    for splits in (None, 4):
        got = ta.paged_attention(
            batch.q, k_cache, v_cache, *batch.args()[3:], 0.08, max_query_len=batch.max_query_len,
            max_seq_len=batch.max_seq_len, num_kv_splits=splits if batch.max_query_len == 1 else None,
            k_scale=k_scale, v_scale=v_scale,
        )  # fmt: skip
        assert rel_err(got, ref) < 2e-2
    k, v = randn(9, 8, 128, seed=1) * 5, randn(9, 8, 128, seed=2)
    slots = torch.tensor([0, 5, -1, 33, 34, 100, 7, -1, 64], device="cuda")
    caches = [torch.zeros(10, 16, 8, 128, dtype=FP8, device="cuda") for _ in range(4)]
    write_kv_cache(k, v, caches[0], caches[1], slots, k_scale, v_scale)
    torch_ops.write_kv_cache(k, v, caches[2], caches[3], slots, k_scale, v_scale)
    for got, want in ((caches[0], caches[2]), (caches[1], caches[3])):  # one e4m3 step apart at most
        assert (got.float() - want.float()).abs().max() <= want.float().abs().max() / 8


@pytest.mark.parametrize("group,static", [(None, False), (128, False), (None, True)])
def test_activation_quantization(group, static):
    x = randn(37, 4096, seed=3) * 3
    static_scale = torch.tensor(0.02, device="cuda") if static else None
    q, s = quantize_activations(x, group, static_scale)
    ref_q, ref_s = torch_ops.quantize_activations(x, group, static_scale)
    torch.testing.assert_close(s.expand_as(ref_s), ref_s, rtol=1e-6, atol=0)
    assert (q.float() - ref_q.float()).abs().max() <= ref_q.float().abs().max() / 8


@pytest.mark.parametrize("m", [1, 7, 300])
@pytest.mark.parametrize("block", [None, (128, 128)])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_linear_matches_the_emulation(m, block, static):
    if block is not None and static:
        pytest.skip("block weights take dynamic activations")
    n, k = 2048, 4096
    x, bias = randn(m, k, seed=4), randn(n, seed=5)
    w = (randn(n, k, seed=6).float() * 30).clamp(-448, 448).to(FP8)
    scale = torch.rand(n if block is None else (n // 128, k // 128), device="cuda") * 1e-3 + 1e-4
    static_scale = torch.tensor(0.03, device="cuda") if static else None
    if m <= 8:  # decode: the GEMV keeps the activations in bf16 (W8A16): the dequantized weights' product
        ref = x.float() @ fp8.dequantize(w, scale, block).t() + bias.float()
    else:  # W8A8: the same activation quantization as the emulation
        ref = torch_ops.fp8_linear(x, w, scale, static_scale, block, bias)
    got = fp8_linear(x, w, scale, static_scale, block, bias)
    assert got.dtype == torch.bfloat16
    assert rel_err(got, ref) < 1e-2


@pytest.mark.parametrize("num_tokens", [1, 16, 600])
def test_fused_moe_bf16_at_qwen3_30b_shape(num_tokens):
    experts, top_k, hidden, inter = 128, 8, 2048, 768
    x = randn(num_tokens, hidden, seed=7)
    w13, w2 = randn(experts, 2 * inter, hidden, seed=8) * 0.02, randn(experts, hidden, inter, seed=9) * 0.02
    weights, ids = torch_ops.moe_topk(randn(num_tokens, experts, seed=10).float(), top_k, True)
    ref = torch_ops.fused_moe(x.float(), w13.float(), w2.float(), weights, ids)
    assert rel_err(fused_moe(x, w13, w2, weights, ids), ref) < 2e-2


def test_fused_moe_under_a_cuda_graph():
    experts, top_k, hidden, inter = 16, 4, 256, 128
    x = randn(8, hidden, seed=11)
    w13, w2 = randn(experts, 2 * inter, hidden, seed=12) * 0.05, randn(experts, hidden, inter, seed=13) * 0.05
    logits = randn(8, experts, seed=14).float()
    weights, ids = torch_ops.moe_topk(logits, top_k, True)
    fused_moe(x, w13, w2, weights, ids)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fused_moe(x, w13, w2, weights, ids)
    new_weights, new_ids = torch_ops.moe_topk(randn(8, experts, seed=15).float(), top_k, True)
    weights.copy_(new_weights)
    ids.copy_(new_ids)
    graph.replay()
    ref = torch_ops.fused_moe(x.float(), w13.float(), w2.float(), new_weights, new_ids)
    assert rel_err(out, ref) < 2e-2
