"""The decode GEMV kernel against an fp32 torch reference (interpreted without a GPU, compiled with).

Shapes are small, with N and K off the block sizes, so that the masked column block and the masked last
K chunk are both exercised; the split-K configs cover the last-arriving-program reduction and its counters.
"""

import pytest
import torch

from engine_service.ops import triton_gemv
from engine_service.ops.triton_gemv import GemvConfig, choose_config, gemv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16 output is one rounding of an fp32 sum: within a couple of bf16 ulps of the fp32 reference.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-4), torch.bfloat16: dict(rtol=1.6e-2, atol=1e-2)}
N, K = 80, 300  # 80 = 2.5 blocks of 32; 300 = 4.7 chunks of 64
CONFIGS = {
    "no-split": GemvConfig(block_n=32, block_k=64, split_k=1),
    "split-3": GemvConfig(block_n=32, block_k=64, split_k=3),  # 128-wide K ranges, the last one partial
}


def randn(*shape, dtype=torch.float32, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype).to(DEVICE)


def reference(x, w, bias=None):
    y = x.float() @ w.float().T
    return y if bias is None else y + bias.float()


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("m", [1, 3, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_matches_torch(dtype, m, with_bias, config):
    x, w = randn(m, K, dtype=dtype, seed=m), randn(N, K, dtype=dtype, seed=10 + m)
    bias = randn(N, dtype=dtype, seed=20 + m) if with_bias else None
    y = gemv(x, w, bias, config=config)
    assert y.shape == (m, N) and y.dtype == dtype
    torch.testing.assert_close(y.float(), reference(x, w, bias), **TOL[dtype])


def test_split_k_is_repeatable_and_leaves_counters_at_zero():
    """The last split resets its counter: a second call (a graph replay) reduces again, to the same bits."""
    config = GemvConfig(block_n=16, block_k=32, split_k=4)
    x, w, bias = randn(2, 200, seed=1), randn(40, 200, seed=2), randn(40, seed=3)
    first = gemv(x, w, bias, config=config)
    second = gemv(x, w, bias, config=config)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, reference(x, w, bias), **TOL[torch.float32])
    counters = [c for (dev, _, n), (_, c) in triton_gemv._WORKSPACES.items() if n == 3]  # cdiv(40, 16)
    assert counters and all(int(c.abs().sum()) == 0 for c in counters)


def test_splits_past_k_are_dropped():
    """split_k=8 over 100 columns of 32-wide chunks leaves 4 non-empty ranges; the result is still right."""
    x, w = randn(1, 100, seed=4), randn(20, 100, seed=5)
    y = gemv(x, w, config=GemvConfig(block_n=16, block_k=32, split_k=8))
    torch.testing.assert_close(y, reference(x, w), **TOL[torch.float32])


def test_strided_rows_and_bad_shapes():
    buf = randn(3, 2 * K, seed=6)
    x, w = buf[:, :K], randn(N, K, seed=7)  # rows K apart in a 2K-wide buffer
    torch.testing.assert_close(gemv(x, w, config=CONFIGS["no-split"]), reference(x, w), **TOL[torch.float32])
    with pytest.raises(ValueError):
        gemv(randn(17, K), w)  # more rows than one 16-row tile
    with pytest.raises(ValueError):
        gemv(x, randn(N, K + 1))
    assert gemv(randn(0, K), w).shape == (0, N)


@pytest.mark.parametrize("n,k", [(3072, 4096), (4096, 2048), (14336, 4096), (4096, 7168), (2048, 8192)])
def test_chosen_configs_are_launchable(n, k):
    """Table and heuristic configs keep the kernel's constraints (a dot dimension >= 16, powers of two)."""
    for m in (1, 8):
        cfg = choose_config(n, k, m)
        for size in (cfg.block_n, cfg.block_k):
            assert size >= 16 and size & (size - 1) == 0
        assert 1 <= cfg.split_k <= 16 and cfg.num_warps in (1, 2, 4, 8) and cfg.num_stages >= 1
