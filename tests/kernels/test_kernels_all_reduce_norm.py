"""The fused all-reduce + add + RMSNorm kernel, one rank's side, in one process: the peer's half of the
exchange (its partial row pushed into our buffer, its epoch raised in our flags) is staged by the test, so
the kernel's wait passes at once. Checks the sum, the residual, the norm, what it pushes (our row in the
peer's buffer, our epoch in the peer's flags), the buffer half it alternates to, and its counters; and that
a peer already a call ahead (a larger epoch) passes the wait too. Two GPUs run the real exchange in
tests/parallel/test_all_reduce_gpu.py."""

from __future__ import annotations

import pytest
import torch

from engine_service.ops import torch_ops
from engine_service.ops.triton_all_reduce_norm import all_reduce_add_rms_norm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS, WORLD = 4, 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # the interpreter has no bf16
@pytest.mark.parametrize("rank", [0, 1])
def test_one_rank_of_the_exchange(dtype, rank):
    if DEVICE == "cuda":
        pytest.skip("one process cannot stage a peer's half on a GPU: see the two-GPU test")
    T, H, eps = 3, 48, 1e-5
    peer = 1 - rank
    g = torch.Generator().manual_seed(rank)
    buffers = [torch.zeros(2, ROWS, WORLD, H, dtype=dtype) for _ in range(WORLD)]
    flags = [torch.zeros(ROWS, WORLD, dtype=torch.int64) for _ in range(WORLD)]
    ptrs = lambda ts: torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64)  # noqa: E731
    counters = torch.zeros(ROWS, dtype=torch.int64)
    weight = torch.randn(H, generator=g).to(dtype)
    residual = torch.randn(T, H, generator=g).to(dtype)
    for call in range(3):  # calls alternate between the two halves of every buffer
        x = torch.randn(T, H, generator=g).to(dtype)
        theirs = torch.randn(T, H, generator=g).to(dtype)
        half = call % 2
        buffers[rank][half, :T, peer] = theirs  # the peer's push ...
        flags[rank][:T, peer] = call + 1 + (call == 2)  # ... and its epoch (on the last call, a call ahead)
        partials = [x, theirs] if rank == 0 else [theirs, x]
        reduced = (partials[0].float() + partials[1].float()).to(dtype)
        want_out, want_residual = torch_ops.fused_add_rms_norm(reduced, residual.clone(), weight, eps)

        out, residual = all_reduce_add_rms_norm(
            x, residual, weight, eps, ptrs(buffers), ptrs(flags), counters, rank, WORLD
        )
        tol = {"atol": 2e-3, "rtol": 2e-3} if dtype == torch.float16 else {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(residual, want_residual, **tol)
        torch.testing.assert_close(out, want_out, **tol)
        assert torch.equal(buffers[peer][half, :T, rank], x)  # pushed into our slot of the peer's row
        assert not buffers[peer][half, T:].any() and not buffers[peer][half, :, peer].any()
        assert flags[peer][:, rank].tolist() == [call + 1] * T + [0] * (ROWS - T)  # our epoch, sent
        assert not flags[peer][:, peer].any()
        assert counters.tolist() == [call + 1] * T + [0] * (ROWS - T)
