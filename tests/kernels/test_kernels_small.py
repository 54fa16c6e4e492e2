"""The element-wise Triton kernels against the torch reference (interpreted without a GPU, compiled with)."""

import pytest
import torch

from engine_service.ops import torch_ops
from engine_service.ops.triton_activation import silu_and_mul
from engine_service.ops.triton_kv_cache import write_kv_cache
from engine_service.ops.triton_norm import fused_add_rms_norm, rms_norm
from engine_service.ops.triton_rotary import rotary_embedding

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES)
def test_write_kv_cache_skips_padding_slots(dtype):
    num_blocks, block_size, heads, dim = 5, 4, 3, 24  # 3 heads, 24 dims: both padded inside the kernel
    # k, v are strided views of one fused buffer, as they come out of a qkv projection.
    kv = randn(7, 2 * heads, dim, dtype=dtype)
    k, v = kv[:, :heads], kv[:, heads:]
    slots = torch.tensor([0, 3, -1, 4, 19, -1, 10], device=DEVICE)  # block edges, last slot, padding
    k_cache = torch.full((num_blocks, block_size, heads, dim), 7.0, dtype=dtype, device=DEVICE)
    v_cache = k_cache.clone()
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    torch_ops.write_kv_cache(k, v, ref_k, ref_v, slots)
    write_kv_cache(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)
    assert (k_cache.view(-1, heads, dim)[[1, 2, 5]] == 7.0).all()  # untouched slots keep their value


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype):
    x, w = randn(5, 96, dtype=dtype, seed=1), randn(96, dtype=dtype, seed=2)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), torch_ops.rms_norm(x, w, 1e-6), **TOL[dtype])


def test_rms_norm_keeps_leading_dims():
    x, w = randn(2, 3, 64, seed=3), randn(64, seed=4)
    torch.testing.assert_close(rms_norm(x, w, 1e-5), torch_ops.rms_norm(x, w, 1e-5), **TOL[torch.float32])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_updates_residual_in_place(dtype):
    x, residual, w = randn(6, 80, dtype=dtype, seed=5), randn(6, 80, dtype=dtype, seed=6), randn(80, seed=7)
    w = w.to(dtype)
    ref_normed, ref_residual = torch_ops.fused_add_rms_norm(x, residual, w, 1e-6)
    normed, new_residual = fused_add_rms_norm(x, residual, w, 1e-6)
    assert new_residual.data_ptr() == residual.data_ptr()
    torch.testing.assert_close(new_residual, ref_residual, **TOL[dtype])
    torch.testing.assert_close(normed, ref_normed, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_embedding_in_place_on_qkv_views(dtype):
    tokens, hq, hkv, dim = 5, 4, 2, 32
    qkv = randn(tokens, hq + 2 * hkv, dim, dtype=dtype, seed=8)
    q, k = qkv[:, :hq], qkv[:, hq : hq + hkv]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
    angles = torch.outer(torch.arange(64).float(), inv_freq)  # [64, D/2]
    cos_sin = torch.cat((angles.cos(), angles.sin()), dim=-1).to(DEVICE)  # [64, D]
    positions = torch.tensor([0, 1, 17, 63, 5], device=DEVICE)
    ref_q, ref_k = torch_ops.rotary_embedding(positions, q, k, cos_sin)
    v_before = qkv[:, hq + hkv :].clone()
    out_q, out_k = rotary_embedding(positions, q, k, cos_sin)
    torch.testing.assert_close(out_q, ref_q, **TOL[dtype])
    torch.testing.assert_close(out_k, ref_k, **TOL[dtype])
    torch.testing.assert_close(qkv[:, :hq], ref_q, **TOL[dtype])  # rotated in place
    assert torch.equal(qkv[:, hq + hkv :], v_before)  # v untouched


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_mul(dtype):
    x = randn(3, 2 * 1500, dtype=dtype, seed=9)  # 1500 > one 1024-wide block: two column programs
    torch.testing.assert_close(silu_and_mul(x), torch_ops.silu_and_mul(x), **TOL[dtype])


@pytest.mark.parametrize("hidden", [48, 5000])  # one block, and two with a masked tail (blocks of 4096)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vocab_slice_embedding(dtype, hidden):
    """A rank's slice [start, start + rows) of the vocabulary: its rows for the ids it holds, zeros for
    the rest (below and above the slice), as the torch path and a plain lookup say."""
    from engine_service.ops.triton_embedding import vocab_slice_embedding

    start, rows = 10, 6
    weight = randn(rows, hidden, dtype=dtype, seed=3)
    ids = torch.tensor([9, 10, 15, 16, 12, 0, 10], device=DEVICE)
    got = vocab_slice_embedding(ids, weight, start)
    want = torch.zeros(len(ids), hidden, dtype=dtype, device=DEVICE)
    for i, token in enumerate(ids.tolist()):
        if start <= token < start + rows:
            want[i] = weight[token - start]
    assert torch.equal(got, want)
    assert torch.equal(torch_ops.vocab_slice_embedding(ids, weight, start), want)
    assert vocab_slice_embedding(ids[:0], weight, start).shape == (0, hidden)
