"""Triton paged attention against the torch reference: through the CPU interpreter (no GPU) or compiled on
CUDA, in fp32 and fp16 (bf16 is broken in the interpreter; the bf16 runs are in test_kernels_gpu.py).

Small shapes that cross block and tile boundaries, single tokens, mixed prefill + decode steps, GQA 1/4/8,
padding sequences, the split-KV path and the launch shapes the GPU defaults never pick on tiny inputs."""

import pytest
import torch
from kernel_cases import make_paged_batch, rel_err

from engine_service.ops import torch_ops
from engine_service.ops import triton_attention as ta

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-5, torch.float16: 2e-3}

# (q_len, seq_len) per sequence: a padding entry (0, 0), decodes at block edges, a whole prompt (q_len ==
# seq_len), a chunk on a cached prefix, a graph-padding decode with an empty cache (1, 0).
MIXED = [(0, 0), (1, 33), (7, 7), (40, 75), (1, 1), (1, 16), (1, 0)]


def run(batch, scale=None, **kwargs):
    scale = scale if scale is not None else batch.q.shape[-1] ** -0.5
    ref = torch_ops.paged_attention(*batch.args(), scale)
    out = torch.full_like(batch.q, float("nan"))  # poisoned: every token of a sequence must be written
    got = ta._paged_attention(
        *batch.args(),
        scale,
        max_query_len=kwargs.pop("max_query_len", batch.max_query_len),
        max_seq_len=batch.max_seq_len,
        out=out,
        **kwargs,
    )
    assert got is out
    return got, ref


def build(pairs, num_heads, num_kv_heads, head_dim=32, block_size=16, dtype=torch.float32, seed=0):
    q_lens, seq_lens = [p[0] for p in pairs], [p[1] for p in pairs]
    return make_paged_batch(
        q_lens,
        seq_lens,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        device=DEVICE,
        seed=seed,
    )


@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_mixed_step_matches_reference(group, block_size):
    batch = build(MIXED, num_heads=2 * group, num_kv_heads=2, block_size=block_size, seed=group)
    out, ref = run(batch)
    assert not out.isnan().any()
    assert rel_err(out, ref) < TOL[torch.float32]
    assert out[-1].abs().max() == 0  # the query with no keys gets zeros, like the reference


@pytest.mark.parametrize("group", [1, 4, 8])
def test_mixed_step_fp16(group):
    batch = build(MIXED, num_heads=2 * group, num_kv_heads=2, dtype=torch.float16, seed=7)
    out, ref = run(batch)
    assert rel_err(out, ref) < TOL[torch.float16]


def test_single_token():
    batch = build([(1, 1)], num_heads=4, num_kv_heads=1)
    out, ref = run(batch)
    assert rel_err(out, ref) < TOL[torch.float32]
    # One key: softmax is 1, the output is that key's value.
    torch.testing.assert_close(out[0], batch.v_cache[batch.block_tables[0, 0], 0, 0].expand(4, -1))


@pytest.mark.parametrize("num_kv_splits", [2, 3, 8])
def test_split_kv_decode(num_kv_splits):
    # More splits than tiles for the short sequences: empty splits must drop out of the reduce.
    pairs = [(1, 1), (1, 16), (1, 17), (1, 100), (1, 129), (1, 0), (0, 0)]
    batch = build(pairs, num_heads=8, num_kv_heads=2, seed=num_kv_splits)
    out, ref = run(batch, num_kv_splits=num_kv_splits)
    assert rel_err(out, ref) < TOL[torch.float32]
    assert out[5].abs().max() == 0


def test_split_kv_with_multi_query_blocks():
    # Speculative-style steps (a few queries per sequence) on the split path: causal limits per q-block.
    batch = build([(3, 40), (2, 70), (1, 5)], num_heads=4, num_kv_heads=1, seed=3)
    out, ref = run(batch, num_kv_splits=4)
    assert rel_err(out, ref) < TOL[torch.float32]


@pytest.mark.parametrize(
    "short,long",
    [
        (ta.AttentionTiles(16, 16, 4, 1), ta.AttentionTiles(32, 16, 4, 1)),  # tiles smaller than a block
        (ta.AttentionTiles(16, 64, 4, 1), ta.AttentionTiles(64, 32, 4, 1)),  # tiles spanning blocks
    ],
)
@pytest.mark.parametrize("block_size", [16, 32])
def test_launch_shapes(short, long, block_size):
    batch = build(MIXED, num_heads=8, num_kv_heads=2, block_size=block_size, seed=11)
    out, ref = run(batch, short=short, long=long)
    assert rel_err(out, ref) < TOL[torch.float32]


def test_odd_group_and_head_dim():
    # 3 query heads per KV head (SmolLM2: 9/3) and a head_dim that is not a power of two.
    batch = build(MIXED, num_heads=6, num_kv_heads=2, head_dim=48, seed=5)
    out, ref = run(batch)
    assert rel_err(out, ref) < TOL[torch.float32]


def test_wrong_hint_costs_speed_not_correctness():
    # A mixed batch announced as decode-only runs everything through the short kernel.
    batch = build(MIXED, num_heads=8, num_kv_heads=2, seed=13)
    out, ref = run(batch, max_query_len=1)
    assert rel_err(out, ref) < TOL[torch.float32]


def test_strided_query_view():
    # q sliced out of a fused qkv projection output: the token stride is not Hq * D.
    batch = build([(5, 20), (1, 9)], num_heads=4, num_kv_heads=2, seed=17)
    qkv = torch.randn(batch.q.shape[0], 8, 32, device=DEVICE)
    qkv[:, :4] = batch.q
    batch.q = qkv[:, :4]
    out, ref = run(batch)
    assert rel_err(out, ref) < TOL[torch.float32]


def test_empty_batch():
    batch = build([(0, 0)], num_heads=4, num_kv_heads=2)
    out = ta.paged_attention(*batch.args(), 1.0, max_query_len=0, max_seq_len=0)
    assert out.shape == (0, 4, 32)


def test_choose_num_kv_splits():
    # Few programs and long sequences: split until about two programs per SM, a power of two.
    assert ta.choose_num_kv_splits(1, 8, 8192, num_sms=132) == 32
    assert ta.choose_num_kv_splits(4, 8, 8192, num_sms=132) == 8
    # Short sequences: no more splits than the power of two that gives each one KV tile (64 keys here).
    assert ta.choose_num_kv_splits(1, 8, 768, num_sms=132) == 16  # 12 tiles
    assert ta.choose_num_kv_splits(1, 4, 768, num_sms=132) == 16
    assert ta.choose_num_kv_splits(1, 8, 300, num_sms=132) == 8  # 5 tiles
    assert ta.choose_num_kv_splits(1, 8, 300, num_sms=132, tile_keys=128) == 4
    assert ta.choose_num_kv_splits(1, 8, 64, num_sms=132) == 1  # one tile
    # A full GPU is never split.
    assert ta.choose_num_kv_splits(256, 8, 8192, num_sms=132) == 1
    assert ta.choose_num_kv_splits(1, 1, 10**6, num_sms=132) == ta.MAX_KV_SPLITS
