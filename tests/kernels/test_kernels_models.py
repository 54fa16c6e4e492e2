"""The kernels the newer architectures need, against the torch reference (interpreted without a GPU):
attention with a sliding window and soft-capped scores, partial rotary, gelu-and-mul, the fused MoE
(alignment and both grouped GEMMs), and the FP8 block GEMM (fed e4m3 operands quantized by torch)."""

import pytest
import torch
from kernel_cases import make_paged_batch, rel_err

from engine_service.layers.quantization.fp8 import dequantize
from engine_service.ops import torch_ops, triton_moe
from engine_service.ops import triton_attention as ta
from engine_service.ops.triton_activation import gelu_tanh_and_mul
from engine_service.ops.triton_fp8 import block_gemm
from engine_service.ops.triton_gemv import GemvConfig, gemv
from engine_service.ops.triton_moe import MoeConfig, fused_moe, moe_align_block_size
from engine_service.ops.triton_rotary import rotary_embedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}

# (q_len, seq_len): decodes far past the window and at its edge, a prompt longer than the window, a chunk
# on a cached prefix that starts inside the window, a padding sequence.
WINDOWED = [(1, 70), (1, 9), (33, 33), (20, 61), (0, 0), (1, 1)]


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "mods", [dict(sliding_window=8), dict(logit_softcap=1.5), dict(sliding_window=17, logit_softcap=4.0)]
)
def test_attention_window_and_softcap(mods, dtype):
    q_lens, seq_lens = [p[0] for p in WINDOWED], [p[1] for p in WINDOWED]
    batch = make_paged_batch(
        q_lens, seq_lens, num_heads=8, num_kv_heads=2, head_dim=32, block_size=16, dtype=dtype, device=DEVICE
    )
    batch.q.mul_(3)  # scores of a few units: the soft cap bends them
    ref = torch_ops.paged_attention(*batch.args(), 0.3, **mods)
    plain = torch_ops.paged_attention(*batch.args(), 0.3)
    assert rel_err(plain, ref) > 1e-2  # the window / cap really change the answer
    got = ta._paged_attention(
        *batch.args(), 0.3, max_query_len=batch.max_query_len, max_seq_len=batch.max_seq_len, **mods
    )
    assert rel_err(got, ref) < TOL[dtype]


@pytest.mark.parametrize("splits", [2, 4])
def test_split_decode_with_window_skips_old_tiles(splits):
    batch = make_paged_batch(
        [1, 1, 1], [200, 40, 7], num_heads=4, num_kv_heads=1, head_dim=32, block_size=16,
        dtype=torch.float32, device=DEVICE,
    )  # fmt: skip
    ref = torch_ops.paged_attention(*batch.args(), 0.2, sliding_window=24, logit_softcap=2.0)
    got = ta._paged_attention(
        *batch.args(), 0.2, max_query_len=1, max_seq_len=200, num_kv_splits=splits,
        sliding_window=24, logit_softcap=2.0,
    )  # fmt: skip
    assert rel_err(got, ref) < TOL[torch.float32]


@pytest.mark.parametrize("stale", ["zeros", "large"])
@pytest.mark.parametrize("splits", [None, 3])
def test_out_of_window_entries_may_point_at_the_null_block(stale, splits):
    """A hybrid model's sliding layers (core/sliding_blocks.py) point a sequence's blocks wholly before the
    window of its step's first query at one null block (zeros, never written), and their old blocks are
    reused by others: the scores of those keys are masked to -inf before the softmax, so neither zeros nor
    another sequence's (finite) values there change a thing."""
    window, bs = 8, 4
    q_lens, seq_lens = [1, 1, 20, 0, 7, 1], [70, 9, 61, 0, 30, 13]
    batch = make_paged_batch(
        q_lens, seq_lens, num_heads=4, num_kv_heads=2, head_dim=32, block_size=bs, dtype=torch.float32,
        device=DEVICE,
    )  # fmt: skip
    kw = dict(sliding_window=window, logit_softcap=2.0)
    ref = torch_ops.paged_attention(*batch.args(), 0.3, **kw)
    null = batch.k_cache.shape[0]  # one more block, past the others: the null block
    fill = torch.zeros if stale == "zeros" else lambda *shape, **k: torch.full(shape, 50.0, **k)
    extra = fill(1, *batch.k_cache.shape[1:], dtype=torch.float32, device=DEVICE)
    batch.k_cache = torch.cat([batch.k_cache, extra])
    batch.v_cache = torch.cat([batch.v_cache, extra])
    tables = batch.block_tables.clone()
    nulled = 0
    for s, (q_len, seq_len) in enumerate(zip(q_lens, seq_lens, strict=True)):
        cut = max(0, (seq_len - q_len - window + 1) // bs)  # blocks the first query no longer sees
        tables[s, :cut] = null
        nulled += cut
    assert nulled >= 20
    batch.block_tables = tables
    torch.testing.assert_close(torch_ops.paged_attention(*batch.args(), 0.3, **kw), ref, rtol=0, atol=0)
    got = ta._paged_attention(
        *batch.args(), 0.3, max_query_len=batch.max_query_len, max_seq_len=batch.max_seq_len,
        num_kv_splits=splits, **kw,
    )  # fmt: skip
    assert not got.isnan().any()
    assert rel_err(got, ref) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gelu_tanh_and_mul(dtype):
    x = randn(5, 2 * 72, dtype=dtype, seed=3)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(gelu_tanh_and_mul(x), torch_ops.gelu_tanh_and_mul(x), **tol)


def test_partial_rotary_leaves_the_other_dimensions():
    q, k = randn(6, 4, 32, seed=4), randn(6, 2, 32, seed=5)
    cache = randn(50, 24, seed=6)  # rotary_dim 24 of head_dim 32
    positions = torch.tensor([0, 3, 9, 49, 1, 2], device=DEVICE)
    ref_q, ref_k = torch_ops.rotary_embedding(positions, q, k, cache)
    got_q, got_k = rotary_embedding(positions, q.clone(), k.clone(), cache)
    torch.testing.assert_close(got_q, ref_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_k, ref_k, rtol=1e-5, atol=1e-5)
    assert torch.equal(ref_q[..., 24:], q[..., 24:])


@pytest.mark.parametrize("small", [True, False])
def test_moe_align_groups_pairs_by_expert_in_padded_blocks(small, monkeypatch):
    if not small:  # the torch-ops path that batches past SMALL_PAIRS take
        monkeypatch.setattr(triton_moe, "SMALL_PAIRS", 0)
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [3, 2], [3, 0]], device=DEVICE)  # P = 10 pairs, E = 5
    sorted_ids, expert_ids, num_post = moe_align_block_size(ids, 4, 5)
    flat = ids.flatten().tolist()
    # expert 0: pairs 1, 4, 9 -> one block; 1: pair 3; 2: pair 7; 3: pairs 0, 2, 5, 6, 8 -> two blocks
    assert num_post.item() == 20
    assert expert_ids[:5].tolist() == [0, 1, 2, 3, 3]
    rows = sorted_ids[:20].view(5, 4).tolist()
    assert rows == [[1, 4, 9, 10], [3, 10, 10, 10], [7, 10, 10, 10], [0, 2, 5, 6], [8, 10, 10, 10]]
    assert all(flat[p] == expert_ids[b].item() for b, row in enumerate(rows) for p in row if p < 10)
    assert (sorted_ids[20:] == 10).all()


def test_moe_align_paths_agree_on_a_random_batch(monkeypatch):
    ids = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(t))[:4] for t in range(50)])
    small = moe_align_block_size(ids.to(DEVICE), 16, 16)
    monkeypatch.setattr(triton_moe, "SMALL_PAIRS", 0)
    large = moe_align_block_size(ids.to(DEVICE), 16, 16)
    used = small[2].item()
    assert used == large[2].item()
    assert torch.equal(small[0][:used], large[0][:used])
    assert torch.equal(small[1][: used // 16], large[1][: used // 16])


@pytest.mark.parametrize("renormalize", [True, False])
def test_moe_topk_kernel(renormalize):
    logits = randn(9, 12, seed=19) * 3
    weights, ids = triton_moe.moe_topk(logits, 3, renormalize)
    ref_w, ref_i = torch_ops.moe_topk(logits, 3, renormalize)
    assert torch.equal(ids, ref_i)
    torch.testing.assert_close(weights, ref_w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "num_tokens,config", [(1, MoeConfig(16, 32, 32, 1, 4, 1)), (37, MoeConfig(16, 32, 16, 2, 4, 1))]
)
def test_fused_moe_matches_the_expert_loop(num_tokens, config, dtype):
    experts, top_k, hidden, inter = 6, 2, 48, 40  # N and K not multiples of the tiles
    x = randn(num_tokens, hidden, dtype=dtype, seed=7)
    w13 = randn(experts, 2 * inter, hidden, dtype=dtype, seed=8) * 0.2
    w2 = randn(experts, hidden, inter, dtype=dtype, seed=9) * 0.2
    logits = randn(num_tokens, experts, seed=10)
    weights, ids = torch_ops.moe_topk(logits, top_k, renormalize=True)
    ref = torch_ops.fused_moe(x.float(), w13.float(), w2.float(), weights, ids)
    got = fused_moe(x, w13, w2, weights, ids, config=config)
    assert got.dtype == dtype
    assert rel_err(got, ref) < (1e-5 if dtype == torch.float32 else 3e-3)


def test_fp8_block_gemm_matches_the_emulation():
    m, n, k, block = 5, 96, 160, (32, 64)  # K past two weight blocks, N and K not tile multiples
    x = randn(m, k, seed=11)
    w = randn(n, k, seed=12)
    w_scale = torch.rand(3, 3, generator=torch.Generator().manual_seed(13)).to(DEVICE) * 0.01 + 0.001
    w_q = (w / 0.05).clamp(-448, 448).to(torch.float8_e4m3fn)
    bias = randn(n, seed=14)
    a_q, a_scale = torch_ops.quantize_activations(x, block[1])
    ref = torch_ops.fp8_linear(x, w_q, w_scale, None, block, bias)
    got = block_gemm(a_q, a_scale, w_q, w_scale, block, torch.float32, bias, config=(16, 32, 1, 4, 1))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", [None, (32, 64)])
@pytest.mark.parametrize("split_k", [1, 2])
def test_fp8_weight_gemv_is_the_dequantized_product(block, split_k):
    m, n, k = 3, 80, 256
    x, bias = randn(m, k, seed=15), randn(n, seed=16)
    w_q = (randn(n, k, seed=17) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    shape = (n,) if block is None else (-(-n // block[0]), k // block[1])
    scale = torch.rand(shape, generator=torch.Generator().manual_seed(18)).to(DEVICE) * 0.01 + 0.001
    ref = x @ dequantize(w_q, scale, block).t() + bias
    got = gemv(x, w_q, bias, GemvConfig(32, 64, split_k, 4, 1), weight_scale=scale, block=block)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
