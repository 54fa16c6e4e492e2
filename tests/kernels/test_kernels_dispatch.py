"""dispatch sends CPU tensors to torch_ops without touching Triton, and keeps the torch path's results."""

import pytest
import torch
from kernel_cases import make_paged_batch

from engine_service.ops import dispatch, torch_ops


@pytest.fixture
def no_triton(monkeypatch):
    def refuse():
        raise AssertionError("the CPU path imported the Triton kernels")

    monkeypatch.setattr(dispatch, "_triton_ops", refuse)


def test_cpu_tensors_use_torch_ops(no_triton):
    x, w = torch.randn(3, 16), torch.randn(16)
    torch.testing.assert_close(dispatch.rms_norm(x, w, 1e-6), torch_ops.rms_norm(x, w, 1e-6))
    residual = torch.randn(3, 16)
    normed, new_residual = dispatch.fused_add_rms_norm(x, residual, w, 1e-6)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(
        dispatch.silu_and_mul(torch.ones(2, 8)), torch_ops.silu_and_mul(torch.ones(2, 8))
    )
    q, k = torch.randn(2, 4, 8), torch.randn(2, 2, 8)
    cos_sin = torch.randn(4, 8)
    positions = torch.tensor([0, 3])
    for got, want in zip(
        dispatch.rotary_embedding(positions, q, k, cos_sin),
        torch_ops.rotary_embedding(positions, q, k, cos_sin),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    k_cache, v_cache = torch.zeros(2, 4, 2, 8), torch.zeros(2, 4, 2, 8)
    dispatch.write_kv_cache(k, k, k_cache, v_cache, torch.tensor([5, -1]))
    torch.testing.assert_close(k_cache.view(-1, 2, 8)[5], k[0])


def test_cpu_paged_attention_takes_hints_and_out(no_triton):
    batch = make_paged_batch(
        [1, 3],
        [9, 3],
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
        block_size=4,
        dtype=torch.float32,
        device="cpu",
    )
    ref = torch_ops.paged_attention(*batch.args(), 0.5)
    out = torch.empty_like(batch.q)
    got = dispatch.paged_attention(
        *batch.args(), 0.5, max_query_len=3, max_seq_len=9, out=out, num_kv_splits=4
    )
    assert got is out
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(
        dispatch.paged_attention(*batch.args(), 0.5, max_query_len=3, max_seq_len=9), ref
    )
