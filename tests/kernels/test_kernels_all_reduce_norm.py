"""The fused all-reduce + add + RMSNorm kernel, one rank's side, in one process: the peer's half of the
exchange (its partial row pushed into our buffer as words tagged with the call) is staged by the test, so
the kernel's wait passes at once. Checks the sum, the residual, the norm, what it pushes (our row, tagged,
in our slot of the peer's buffer), the buffer half it alternates to, and its counters; and, with the
kernel in a thread, that it pushes first and then polls until the peer's words carry this call's tag.
Two GPUs run the real exchange in tests/parallel/test_all_reduce_gpu.py."""

from __future__ import annotations

import pytest
import torch

from engine_service.ops import torch_ops
from engine_service.ops.triton_all_reduce_norm import all_reduce_add_rms_norm, words_per_row

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ROWS, WORLD = 4, 2


def tagged(values: torch.Tensor, tag: int) -> torch.Tensor:
    """[T, H] values -> [T, words] int64: each 32 bits of a row in the low half of a word, the tag above."""
    return (values.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF) | (tag << 32)


@pytest.mark.parametrize("hidden", [48, 40])  # 40: the row is shorter than its power-of-two block
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])  # the interpreter has no bf16
@pytest.mark.parametrize("rank", [0, 1])
def test_one_rank_of_the_exchange(dtype, rank, hidden):
    if DEVICE == "cuda":
        pytest.skip("one process cannot stage a peer's half on a GPU: see the two-GPU test")
    T, H, eps = 3, hidden, 1e-5
    peer = 1 - rank
    words = words_per_row(H, dtype)
    g = torch.Generator().manual_seed(rank)
    buffers = [torch.zeros(2, ROWS, WORLD, words, dtype=torch.int64) for _ in range(WORLD)]
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    counters = torch.zeros(ROWS, dtype=torch.int64)
    weight = torch.randn(H, generator=g).to(dtype)
    residual = torch.randn(T, H, generator=g).to(dtype)
    for call in range(3):  # calls alternate between the two halves of every buffer
        x = torch.randn(T, H, generator=g).to(dtype)
        theirs = torch.randn(T, H, generator=g).to(dtype)
        half = call % 2
        buffers[rank][half, :T, peer] = tagged(theirs, call + 1)  # the peer's push
        partials = [x, theirs] if rank == 0 else [theirs, x]
        reduced = (partials[0].float() + partials[1].float()).to(dtype)
        want_out, want_residual = torch_ops.fused_add_rms_norm(reduced, residual.clone(), weight, eps)

        out, residual = all_reduce_add_rms_norm(x, residual, weight, eps, ptrs, counters, rank, WORLD)
        tol = {"atol": 2e-3, "rtol": 2e-3} if dtype == torch.float16 else {"atol": 1e-5, "rtol": 1e-5}
        torch.testing.assert_close(residual, want_residual, **tol)
        torch.testing.assert_close(out, want_out, **tol)
        assert torch.equal(buffers[peer][half, :T, rank], tagged(x, call + 1))  # pushed, with this call's tag
        assert not buffers[peer][half, T:].any() and not buffers[peer][half, :, peer].any()
        assert counters.tolist() == [call + 1] * T + [0] * (ROWS - T)


def test_waits_for_the_peers_tag_after_pushing():
    """A slot that still holds the previous call's words keeps the kernel polling, after it has pushed its
    own row: the sum, the residual and the norm wait for the peer's words of this call."""
    if DEVICE == "cuda":
        pytest.skip("one process cannot stage a peer's half on a GPU: see the two-GPU test")
    import threading
    import time

    T, H, rank, peer, dtype = 1, 16, 0, 1, torch.float32
    words = words_per_row(H, dtype)
    buffers = [torch.zeros(2, ROWS, WORLD, words, dtype=torch.int64) for _ in range(WORLD)]
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.int64)
    counters = torch.full((ROWS,), 2, dtype=torch.int64)  # two calls made: this is call 3, half 0
    x, theirs = torch.ones(T, H, dtype=dtype), torch.full((T, H), 2.0, dtype=dtype)
    residual, weight = torch.zeros(T, H, dtype=dtype), torch.ones(H, dtype=dtype)
    buffers[rank][0, :T, peer] = tagged(theirs, 1)  # what call 1 left in this half: not this call's
    done = []
    kernel = threading.Thread(
        target=lambda: done.append(
            all_reduce_add_rms_norm(x, residual, weight, 1e-5, ptrs, counters, rank, WORLD)
        ),
        daemon=True,
    )
    kernel.start()
    time.sleep(1.0)
    assert kernel.is_alive() and not done  # still polling
    assert torch.equal(buffers[peer][0, :T, rank], tagged(x, 3))  # but its own row went out first
    buffers[rank][0, :T, peer] = tagged(theirs, 3)  # the peer's push of this call
    kernel.join(timeout=30)
    assert done, "the kernel did not see the peer's words"
    out, new_residual = done[0]
    assert torch.equal(new_residual, torch.full((T, H), 3.0))
    torch.testing.assert_close(out, torch.ones(T, H))
    assert counters[0].item() == 3
