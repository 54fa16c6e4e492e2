"""The pushed all-reduce, one rank's side in one process (Triton's interpreter): the row-parallel GEMV
stores its output into every rank's buffer and counts its column blocks into the peer's pad; the reducing
norm, with the peer's half staged by the test, waits for the counts, sums the ranks' rows in rank order,
adds the residual and norms. Checks the slots written, the counts, their reset, the buffer half each call
uses, and the counters. Two GPUs run the real exchange (benchmarks/all_reduce.py, tests/parallel)."""

from __future__ import annotations

import pytest
import torch

from engine_service.ops import torch_ops
from engine_service.ops.triton_all_reduce_norm import gathered_add_rms_norm
from engine_service.ops.triton_gemv import GemvConfig, Push, gemv_push

ROWS, WORLD, T, H, K = 4, 2, 3, 48, 40


def ptrs(tensors):
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64)


@pytest.mark.parametrize("split", [1, 3], ids=["plain", "split-k"])
@pytest.mark.parametrize("rank", [0, 1])
def test_one_rank_of_the_pushed_exchange(rank, split):
    if torch.cuda.is_available():
        pytest.skip("one process cannot stage a peer's half on a GPU: see the two-GPU benchmark")
    peer, eps = 1 - rank, 1e-5
    g = torch.Generator().manual_seed(10 * rank + split)
    buffers = [torch.zeros(2, ROWS, WORLD, H) for _ in range(WORLD)]
    pads = [torch.zeros(2, ROWS, WORLD, dtype=torch.int32) for _ in range(WORLD)]
    counters = torch.zeros(ROWS, dtype=torch.int32)
    push = Push(ptrs(buffers), ptrs(pads), counters, rank, WORLD, ROWS)
    config = GemvConfig(block_n=16, block_k=16, split_k=split)
    weight, norm_weight = torch.randn(H, K, generator=g), torch.randn(H, generator=g)
    bias = torch.randn(H, generator=g) if rank == 0 else None  # a row-parallel bias: rank 0 adds it
    residual = torch.randn(T, H, generator=g)
    for call, half in ((0, 0), (1, 1), (2, 0)):  # the halves alternate with the row counters
        x = torch.randn(T, K, generator=g)
        partial, counts = gemv_push(x, weight, bias, push, config=config)
        want = x @ weight.T + (bias if bias is not None else 0)
        torch.testing.assert_close(partial, want, atol=1e-4, rtol=1e-5)
        assert counts == 3  # column blocks of 16 in 48
        for buffer in buffers:  # every rank's buffer got our rows, at our slot, in this call's half
            assert torch.equal(buffer[half, :T, rank], partial)
        assert pads[peer][half, :T, rank].tolist() == [counts] * T
        assert pads[peer][1 - half].abs().sum() == 0 and pads[rank].abs().sum() == 0

        theirs = torch.randn(T, H, generator=g)  # the peer's push, as it would land here
        buffers[rank][half, :T, peer] = theirs
        pads[rank][half, :T, peer] = counts
        pads[peer].zero_()  # the peer consumed our counts
        parts = [partial, theirs] if rank == 0 else [theirs, partial]
        reduced = parts[0] + parts[1]
        want_out, want_residual = torch_ops.fused_add_rms_norm(reduced, residual.clone(), norm_weight, eps)
        out, residual = gathered_add_rms_norm(
            residual, norm_weight, eps, push.buffer_ptrs, push.signal_ptrs, counters, rank, WORLD, counts
        )
        torch.testing.assert_close(residual, want_residual, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, want_out, atol=1e-5, rtol=1e-5)
        assert pads[rank].abs().sum() == 0  # the counts were taken back to 0
        assert counters.tolist() == [call + 1] * T + [0] * (ROWS - T)
