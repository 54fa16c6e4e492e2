"""The fused all-reduce + add + RMSNorm kernel, one rank's side, in one process: the peer's half of the
exchange (its partial row in its buffer, its "ready" flag in our signal pad) is staged by the test, so the
kernel's barrier passes at once. Checks the sum, the residual, the norm, the flags it leaves (our signal
raised in the peer's pad, the peer's consumed in ours), the buffer half it alternates to, and its counters.
Two GPUs run the real exchange in tests/parallel/test_all_reduce_gpu.py."""

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
    buffers = [torch.zeros(2 * ROWS * H, dtype=dtype) for _ in range(WORLD)]
    pads = [torch.zeros(ROWS * WORLD, dtype=torch.int32) for _ in range(WORLD)]
    ptrs = lambda ts: torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64)  # noqa: E731
    counters = torch.zeros(ROWS, dtype=torch.int32)
    weight = torch.randn(H, generator=g).to(dtype)
    residual = torch.randn(T, H, generator=g).to(dtype)
    for call in range(2):  # the second call uses the other half of every buffer
        x = torch.randn(T, H, generator=g).to(dtype)
        theirs = torch.randn(T, H, generator=g).to(dtype)
        half = call * ROWS * H
        buffers[peer][half : half + T * H] = theirs.reshape(-1)
        pads[rank][torch.arange(T) * WORLD + peer] = 1  # the peer's "ready" for each row
        pads[peer].zero_()  # it consumed our previous signals
        partials = [x, theirs] if rank == 0 else [theirs, x]
        reduced = (partials[0].float() + partials[1].float()).to(dtype)
        want_out, want_residual = torch_ops.fused_add_rms_norm(reduced, residual.clone(), weight, eps)

        out, residual = all_reduce_add_rms_norm(
            x, residual, weight, eps, ptrs(buffers), ptrs(pads), counters, rank, WORLD
        )
        tol = {"atol": 2e-3, "rtol": 2e-3} if dtype == torch.float16 else {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(residual, want_residual, **tol)
        torch.testing.assert_close(out, want_out, **tol)
        assert torch.equal(buffers[rank][half : half + T * H], x.reshape(-1))
        assert pads[peer][torch.arange(T) * WORLD + rank].tolist() == [1] * T  # our "ready", sent
        assert pads[rank].tolist() == [0] * (ROWS * WORLD)  # theirs, consumed
        assert counters.tolist() == [call + 1] * T + [0] * (ROWS - T)
