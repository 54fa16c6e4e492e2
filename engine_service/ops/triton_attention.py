"""Paged attention in Triton: one kernel for prefill chunks and decodes, plus a split-KV reduce.

Same contract as `torch_ops.paged_attention` (read its docstring for the cache layout and the step batch).

Work split. A program owns one *q-block* of one sequence for one KV head: BLOCK_Q query tokens times the
GROUP query heads that share that KV head, packed into BLOCK_M = BLOCK_Q * GROUP rows (padded up), so
every K/V tile is loaded once per group and feeds one `tl.dot` of M = BLOCK_M rows:

    row r  ->  token  q_block * BLOCK_Q + r // GROUP   (of this sequence)
               head   kv_head * GROUP + r % GROUP

Two grids, neither needing a host sync:
  - per sequence (SEQ_GRID, decode launches): program i is sequence i and walks its q-blocks (one, for a
    decode). No search, so short programs start streaming K/V at once.
  - per q-block (prefill launches): sequence s owns the indices [qsl[s] // BLOCK_Q + s,
    qsl[s+1] // BLOCK_Q + s + 1), so T // BLOCK_Q + S programs per KV head cover every sequence (surplus
    ones exit at once); a program finds its sequence by binary search over qsl.

Each program walks the keys 0 .. last position of its q-block in tiles of TILE_N, looking each key's block
up in the block table, with an fp32 online softmax (exp2, scale folded in). Causal masking is per row.

Two shapes of the kernel:
  - short: BLOCK_M = max(16, GROUP) rows on the sequence grid, for decodes (and other sequences of
    <= BLOCK_Q queries). The work is streaming KV, so a small M wastes only tensor-core slots, not bytes.
  - long: BLOCK_M = 128 rows on the q-block grid, for prefill chunks, where the dots dominate and K/V reuse
    across queries pays (wgmma on sm_90).
  A decode-only step launches the short kernel once; a mixed step launches both, each skipping the
  sequences of the other kind (`min_q_len`/`max_q_len`), so decodes riding along a prefill chunk do not
  pay for 128-row dots.

Split-KV (flash-decoding). When a decode step has too few (sequence, KV head) programs to fill the GPU, each
one is split into `num_splits` programs over contiguous ranges of KV tiles; each writes an unnormalized
fp32 partial (acc, running max, running sum) and `_reduce_splits_kernel` combines them. The ranges come from
the actual seq_len inside the kernel, so the grid depends only on the batch size and `num_splits`: a decode
call can be captured in a CUDA graph and replayed with other seq_lens, as long as `num_splits` was sized
for the longest sequence the graph will see (pass `max_seq_len=max_model_len` when capturing).

Nothing here reads a device value on the host: `max_query_len` and `max_seq_len` are host hints that pick
the launch shapes; correctness never depends on them.

Padding. A sequence with q_len 0 is skipped; a query whose sequence has seq_len 0 gets zeros (as in
torch_ops). Rows of `out` for tokens outside every sequence are unspecified, so a padded CUDA-graph batch
should give each padding token its own sequence with seq_len 0 (and slot -1 in write_kv_cache).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous

_LOG2E = 1.4426950408889634
_NO_LIMIT = 2**31 - 1
# Running max before any key is seen: finite, so exp2(m_old - m_new) of a still-empty row is exp2(0)
# instead of NaN; masked scores are -inf and still give exactly 0.
_EMPTY_MAX = tl.constexpr(-1.0e30)

# Split-KV heuristic (see choose_num_kv_splits).
MAX_KV_SPLITS = 64
PROGRAMS_PER_SM = 2


@dataclass(frozen=True)
class AttentionTiles:
    """Launch shape of one kernel variant: block_m rows (queries x heads of a group), tile_n keys a step."""

    block_m: int
    tile_n: int
    num_warps: int
    num_stages: int


def short_tiles(group: int, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> AttentionTiles:
    """Decode shape: one or a few queries per sequence, bound by streaming K/V.

    The pipeliner keeps one K+V tile in flight per program while the previous one is reduced (sm_90 build:
    39 KB shared memory, ~180 registers at 4 warps for D=128, so two or more programs per SM): tiles of
    16 KB per tensor (64 keys x D=128, 128 keys x D=64 in bf16) put 64+ KB in flight per SM, above what
    covers DRAM latency at full bandwidth (~25 KB per SM on H100)."""
    d = triton.next_power_of_2(head_dim)
    tile_bytes = 16384 if dtype.itemsize <= 2 else 8192  # fp32 (debug path on CUDA): keep registers in bounds
    tile_n = max(16, min(128, tile_bytes // (d * dtype.itemsize)))
    return AttentionTiles(
        block_m=max(16, triton.next_power_of_2(group)), tile_n=tile_n, num_warps=4, num_stages=3
    )


def long_tiles(group: int, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> AttentionTiles:
    """Prefill shape: many queries per sequence, bound by the two dots per tile (wgmma on sm_90)."""
    d = triton.next_power_of_2(head_dim)
    if dtype.itemsize > 2:  # fp32 runs on FMA units; this shape compiles without spills on sm_90
        block_m = max(32, triton.next_power_of_2(group))
        return AttentionTiles(block_m=block_m, tile_n=32, num_warps=8, num_stages=2)
    block_m = max(128 if d <= 128 else 64, triton.next_power_of_2(group))
    tile_n = 64 if d <= 128 else 32
    return AttentionTiles(block_m=block_m, tile_n=tile_n, num_warps=8 if block_m >= 128 else 4, num_stages=2)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def choose_num_kv_splits(
    num_seqs: int, num_kv_heads: int, max_seq_len: int, num_sms: int, tile_keys: int = 64
) -> int:
    """Splits per (sequence, KV head) for a decode step: enough programs for about PROGRAMS_PER_SM per SM,
    but no more than it takes to give each split one KV tile (`tile_keys` keys) of `max_seq_len` (the
    longest sequence the launch, or the CUDA graph that captures it, must serve). A power of two, so few
    kernel variants get compiled. At batch 1 a program is bound by the latency of its serial walk over its
    tiles, not by bandwidth: one tile a split is the fastest, and a sequence shorter than the bound leaves
    the splits past its end empty (each costs a program that exits at once)."""
    programs = num_seqs * num_kv_heads
    target = PROGRAMS_PER_SM * num_sms
    tiles = triton.cdiv(max_seq_len, tile_keys)
    if programs >= target // 2 or tiles < 2:
        return 1
    fill = min(triton.cdiv(target, programs), MAX_KV_SPLITS)
    return min(1 << (fill.bit_length() - 1), triton.next_power_of_2(tiles))  # powers of two


@triton.jit
def _find_seq(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q: tl.constexpr):
    """Largest s with query_start_loc[s] // BLOCK_Q + s <= q_block (strictly increasing in s)."""
    lo: tl.int32 = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        if start <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit(do_not_specialize=["num_seqs"])  # the binary search carries it as a loop value
def _paged_attention_kernel(
    out_ptr,  # [T, Hq, D]
    q_ptr,  # [T, Hq, D]
    k_cache_ptr,  # [N, B, Hkv, D]
    v_cache_ptr,  # [N, B, Hkv, D]
    part_acc_ptr,  # fp32 [T, Hq, num_splits, D]   (split launches only)
    part_max_ptr,  # fp32 [T, Hq, num_splits]      (log2 domain)
    part_sum_ptr,  # fp32 [T, Hq, num_splits]
    query_start_loc_ptr,  # int32 [S + 1]
    seq_lens_ptr,  # int32 [S]
    block_tables_ptr,  # int32 [S, M]
    num_seqs,
    num_splits,
    min_q_len,  # this launch serves only sequences with min_q_len <= q_len <= max_q_len
    max_q_len,
    qk_scale,  # softmax scale * k_scale, times log2(e) unless SOFTCAP
    v_scale,  # an fp8 cache's V scale (1.0 otherwise)
    window,  # SLIDING: a query at position p sees keys p - window < j <= p
    softcap,  # SOFTCAP: scores become softcap * tanh(scores / softcap)
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_vb,
    stride_vs,
    stride_vh,
    stride_bt,
    NUM_HEADS: tl.constexpr,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    TILE_N: tl.constexpr,
    SEQ_GRID: tl.constexpr,
    SPLIT: tl.constexpr,
    SLIDING: tl.constexpr,
    SOFTCAP: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    PDL: tl.constexpr,
):
    """Grid (q-blocks or sequences, KV heads, KV splits).

    SEQ_GRID (decode launches): program 0-index = sequence; it walks that sequence's q-blocks (one for a
    decode) with no search. Otherwise it is a q-block index over the batch, resolved by binary search."""
    if PDL:
        wait_for_previous()
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if SEQ_GRID:
        seq = tl.program_id(0)
        q_start = tl.load(query_start_loc_ptr + seq)
        q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
        seq_len = tl.load(seq_lens_ptr + seq)  # with the two above: one round trip, not two
        if (q_len < min_q_len) | (q_len > max_q_len):  # a padding sequence, or the other launch's
            return
        for q_block_local in range(0, tl.cdiv(q_len, BLOCK_Q)):
            _attend_q_block(
                out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
                block_tables_ptr, seq, q_start, q_len, seq_len, q_block_local, kv_head, split, num_splits,
                qk_scale, v_scale, window, softcap, stride_qt, stride_qh, stride_ot, stride_oh, stride_kb,
                stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt, NUM_HEADS, GROUP, HEAD_DIM,
                HEAD_DIM_PAD, BLOCK_SIZE, BLOCK_M, BLOCK_Q, TILE_N, SPLIT, SLIDING, SOFTCAP, DOT_PRECISION,
            )  # fmt: skip
    else:
        q_block = tl.program_id(0)
        seq = _find_seq(query_start_loc_ptr, q_block, num_seqs, BLOCK_Q)
        q_start = tl.load(query_start_loc_ptr + seq)
        q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
        q_block_local = q_block - (q_start // BLOCK_Q + seq)
        if q_block_local * BLOCK_Q >= q_len:  # surplus q-block (or a padding sequence with no queries)
            return
        if (q_len < min_q_len) | (q_len > max_q_len):  # the other launch of a mixed step serves it
            return
        seq_len = tl.load(seq_lens_ptr + seq)
        _attend_q_block(
            out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
            block_tables_ptr, seq, q_start, q_len, seq_len, q_block_local, kv_head, split, num_splits,
            qk_scale, v_scale, window, softcap, stride_qt, stride_qh, stride_ot, stride_oh, stride_kb,
            stride_ks, stride_kh, stride_vb, stride_vs, stride_vh, stride_bt, NUM_HEADS, GROUP, HEAD_DIM,
            HEAD_DIM_PAD, BLOCK_SIZE, BLOCK_M, BLOCK_Q, TILE_N, SPLIT, SLIDING, SOFTCAP, DOT_PRECISION,
        )  # fmt: skip


@triton.jit
def _attend_q_block(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
    block_tables_ptr, seq, q_start, q_len, seq_len, q_block_local, kv_head, split, num_splits,
    qk_scale, v_scale, window, softcap, stride_qt, stride_qh, stride_ot, stride_oh, stride_kb, stride_ks,
    stride_kh, stride_vb, stride_vs, stride_vh, stride_bt,
    NUM_HEADS: tl.constexpr, GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_Q: tl.constexpr, TILE_N: tl.constexpr,
    SPLIT: tl.constexpr, SLIDING: tl.constexpr, SOFTCAP: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One q-block (BLOCK_Q queries x GROUP heads) against its keys, or against one split of them."""
    context_len = seq_len - q_len
    rows = tl.arange(0, BLOCK_M)
    row_q = q_block_local * BLOCK_Q + rows // GROUP  # query index within the sequence
    row_head = kv_head * GROUP + rows % GROUP
    row_valid = (rows < BLOCK_Q * GROUP) & (row_q < q_len)
    row_pos = context_len + row_q  # absolute position: the row sees keys 0 ..= row_pos
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    d_valid = offs_d < HEAD_DIM
    row_tok = (q_start + row_q).to(tl.int64)

    q = tl.load(
        q_ptr + row_tok[:, None] * stride_qt + row_head[:, None] * stride_qh + offs_d[None, :],
        mask=row_valid[:, None] & d_valid[None, :],
        other=0.0,
    )  # [BLOCK_M, D]

    # Keys this q-block can see: 0 .. (position of its last query); never past seq_len.
    kv_len = tl.minimum(seq_len, context_len + (q_block_local + 1) * BLOCK_Q)
    kv_len = tl.maximum(kv_len, 0)
    num_tiles = tl.cdiv(kv_len, TILE_N)
    first_tile = 0
    if SLIDING:  # tiles wholly before the window of the q-block's first query are skipped
        first_tile = tl.maximum(context_len + q_block_local * BLOCK_Q - window + 1, 0) // TILE_N
    if SPLIT:
        tiles_per_split = tl.cdiv(num_tiles - first_tile, num_splits)
        tile_lo = first_tile + split * tiles_per_split
        tile_hi = tl.minimum(tile_lo + tiles_per_split, num_tiles)
    else:
        tile_lo = first_tile
        tile_hi = num_tiles

    m_i = tl.full([BLOCK_M], _EMPTY_MAX, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], dtype=tl.float32)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    k_head = k_cache_ptr + kv_head * stride_kh
    v_head = v_cache_ptr + kv_head * stride_vh

    for tile in range(tile_lo, tile_hi):
        offs_n = tile * TILE_N + tl.arange(0, TILE_N)
        n_valid = offs_n < kv_len
        block = tl.load(block_table_row + offs_n // BLOCK_SIZE, mask=n_valid, other=0).to(tl.int64)
        in_block = offs_n % BLOCK_SIZE
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(
            k_head + block[:, None] * stride_kb + in_block[:, None] * stride_ks + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )  # [TILE_N, D]
        v = tl.load(
            v_head + block[:, None] * stride_vb + in_block[:, None] * stride_vs + offs_d[None, :],
            mask=kv_mask,
            other=0.0,
        )  # [TILE_N, D], asked for with K: both in flight while the scores are computed
        s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale  # [BLOCK_M, TILE_N]
        if SOFTCAP:  # softcap * tanh(s / softcap), tanh(x) = 2 sigmoid(2x) - 1; then into the log2 domain
            s = (2.0 * tl.sigmoid(s * (2.0 / softcap)) - 1.0) * (softcap * 1.4426950408889634)
        visible = (offs_n[None, :] <= row_pos[:, None]) & n_valid[None, :]
        if SLIDING:
            visible = visible & (offs_n[None, :] > row_pos[:, None] - window)
        s = tl.where(visible, s, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision=DOT_PRECISION)
        m_i = m_new

    acc = acc * v_scale
    if SPLIT:
        # Unnormalized partials; an empty split writes (acc 0, sum 0, max _EMPTY_MAX): the reduce drops it.
        part_row = (row_tok * NUM_HEADS + row_head) * num_splits + split  # [BLOCK_M]
        tl.store(part_max_ptr + part_row, m_i, mask=row_valid)
        tl.store(part_sum_ptr + part_row, l_i, mask=row_valid)
        tl.store(
            part_acc_ptr + part_row[:, None] * HEAD_DIM + offs_d[None, :],
            acc,
            mask=row_valid[:, None] & d_valid[None, :],
        )
    else:
        # A row that saw no key (a padding sequence with seq_len 0) has l = 0: it gets zeros, not NaN.
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        tl.store(
            out_ptr + row_tok[:, None] * stride_ot + row_head[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=row_valid[:, None] & d_valid[None, :],
        )


@triton.jit
def _reduce_splits_kernel(
    out_ptr,  # [T, Hq, D]
    part_acc_ptr,  # fp32 [T, Hq, num_splits, D]
    part_max_ptr,  # fp32 [T, Hq, num_splits]
    part_sum_ptr,  # fp32 [T, Hq, num_splits]
    num_splits,
    stride_ot,
    stride_oh,
    NUM_HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    PDL: tl.constexpr,
):
    if PDL:
        wait_for_previous()
    token = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    offs_d = tl.arange(0, HEAD_DIM_PAD)
    s_valid = offs_s < num_splits
    d_valid = offs_d < HEAD_DIM
    base = (token * NUM_HEADS + head) * num_splits

    m = tl.load(part_max_ptr + base + offs_s, mask=s_valid, other=float("-inf"))
    sums = tl.load(part_sum_ptr + base + offs_s, mask=s_valid, other=0.0)
    live = s_valid & (m > _EMPTY_MAX)  # a split past the sequence's end left nothing to read
    acc = tl.load(
        part_acc_ptr + (base + offs_s)[:, None] * HEAD_DIM + offs_d[None, :],
        mask=live[:, None] & d_valid[None, :],
        other=0.0,
    )  # [SPLITS_PAD, D]
    m_all = tl.max(m, axis=0)
    w = tl.exp2(m - m_all)  # [SPLITS_PAD]; 0 for padding splits, 1 everywhere if all splits were empty
    denom = tl.sum(w * sums, axis=0)
    out = tl.sum(w[:, None] * acc, axis=0) / tl.where(denom > 0.0, denom, 1.0)
    tl.store(
        out_ptr + token * stride_ot + head * stride_oh + offs_d,
        out.to(out_ptr.dtype.element_ty),
        mask=d_valid,
    )


def paged_attention(
    q: torch.Tensor,  # [T, Hq, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    query_start_loc: torch.Tensor,  # int32 [S + 1]
    seq_lens: torch.Tensor,  # int32 [S]
    block_tables: torch.Tensor,  # int32 [S, M]
    scale: float,
    *,
    max_query_len: int,
    max_seq_len: int,
    out: torch.Tensor | None = None,  # [T, Hq, D]; rows of tokens outside every sequence are unspecified
    num_kv_splits: int | None = None,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal paged attention for a step mixing prefill chunks and decodes; no host sync.

    sliding_window / logit_softcap / k_scale / v_scale: as in `torch_ops.paged_attention`. An fp8 cache is
    read as it lies (converted to q's dtype on load): k_scale folds into the softmax scale, v_scale into
    the output.

    max_query_len / max_seq_len: host-side upper bounds of q_len and seq_len over the batch. They only pick
    launch shapes: max_query_len chooses decode-only vs mixed launches, max_seq_len the KV split of a
    decode step. Under a CUDA graph, pass the bound the graph must serve (max_model_len) as max_seq_len, or
    fix `num_kv_splits` yourself: the split count is baked into the captured grid.
    """
    return _paged_attention(
        q,
        k_cache,
        v_cache,
        query_start_loc,
        seq_lens,
        block_tables,
        scale,
        max_query_len=max_query_len,
        max_seq_len=max_seq_len,
        out=out,
        num_kv_splits=num_kv_splits,
        sliding_window=sliding_window,
        logit_softcap=logit_softcap,
        k_scale=k_scale,
        v_scale=v_scale,
    )


def _paged_attention(
    q,
    k_cache,
    v_cache,
    query_start_loc,
    seq_lens,
    block_tables,
    scale,
    *,
    max_query_len,
    max_seq_len,
    out=None,
    num_kv_splits=None,
    sliding_window=None,
    logit_softcap=None,
    k_scale=1.0,
    v_scale=1.0,
    short: AttentionTiles | None = None,
    long: AttentionTiles | None = None,
):
    """paged_attention with the launch shapes exposed, for tests and the benchmark's sweeps."""
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    num_seqs = seq_lens.shape[0]
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads are not a multiple of {num_kv_heads} KV heads")
    if q.stride(2) != 1 or k_cache.stride(3) != 1 or v_cache.stride(3) != 1:
        raise ValueError("paged_attention needs the head dimension contiguous in q and the caches")
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.empty_like(q)
    if num_tokens == 0 or num_seqs == 0:
        return out
    short = short or short_tiles(group, head_dim, q.dtype)
    long = long or long_tiles(group, head_dim, q.dtype)
    short_block_q = short.block_m // group
    mods = _ScoreMods(sliding_window or 0, logit_softcap or 0.0, k_scale, v_scale)
    args = (q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale, out, mods)

    if max_query_len <= short_block_q:
        if num_kv_splits is None:
            num_sms = _num_sms(q.device.index or 0) if q.is_cuda else 1
            keys = min(max_seq_len, sliding_window) if sliding_window else max_seq_len  # keys a query reads
            num_kv_splits = choose_num_kv_splits(num_seqs, num_kv_heads, keys, num_sms, short.tile_n)
        # Every q_len is served: a wrong hint can cost speed, never correctness.
        _launch(*args, short, seq_grid=True, min_q_len=1, max_q_len=_NO_LIMIT, num_splits=num_kv_splits)
        return out

    _launch(*args, long, seq_grid=False, min_q_len=short_block_q + 1, max_q_len=_NO_LIMIT, num_splits=1)
    if num_seqs > 1:  # decodes riding along the prefill chunks
        _launch(*args, short, seq_grid=True, min_q_len=1, max_q_len=short_block_q, num_splits=1)
    return out


@dataclass(frozen=True)
class _ScoreMods:
    """What a model changes in the scores: a sliding window (0: none), tanh soft-capping (0: none), and the
    per-tensor scales of an fp8 cache."""

    window: int
    softcap: float
    k_scale: float
    v_scale: float


def _launch(
    q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale, out, mods: _ScoreMods,
    tiles: AttentionTiles, *, seq_grid: bool, min_q_len: int, max_q_len: int, num_splits: int,
) -> None:  # fmt: skip
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    num_seqs = seq_lens.shape[0]
    group = num_heads // num_kv_heads
    block_m = max(tiles.block_m, triton.next_power_of_2(group))
    block_q = block_m // group
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))
    split = num_splits > 1
    if split:
        part_acc = torch.empty(
            (num_tokens, num_heads, num_splits, head_dim), dtype=torch.float32, device=q.device
        )
        part_max = torch.empty((num_tokens, num_heads, num_splits), dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_acc = part_max = part_sum = out  # never touched: SPLIT is a compile-time False
    # Sequence s owns q-blocks [qsl[s] // block_q + s, qsl[s+1] // block_q + s + 1): T // block_q + S of them.
    num_programs = num_seqs if seq_grid else num_tokens // block_q + num_seqs
    grid = (num_programs, num_kv_heads, num_splits)
    _paged_attention_kernel[grid](
        out,
        q,
        k_cache,
        v_cache,
        part_acc,
        part_max,
        part_sum,
        query_start_loc,
        seq_lens,
        block_tables,
        num_seqs,
        num_splits,
        min_q_len,
        max_q_len,
        scale * mods.k_scale * (1.0 if mods.softcap else _LOG2E),
        mods.v_scale,
        mods.window or _NO_LIMIT,
        mods.softcap or 1.0,
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        v_cache.stride(0),
        v_cache.stride(1),
        v_cache.stride(2),
        block_tables.stride(0),
        NUM_HEADS=num_heads,
        GROUP=group,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=block_size,
        BLOCK_M=block_m,
        BLOCK_Q=block_q,
        TILE_N=tiles.tile_n,
        SEQ_GRID=seq_grid,
        SPLIT=split,
        SLIDING=bool(mods.window),
        SOFTCAP=bool(mods.softcap),
        # fp32 models stay exact (no tf32); 16-bit inputs ignore this.
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
        **launch_options(q),
    )
    if split:
        _reduce_splits_kernel[(num_tokens, num_heads)](
            out,
            part_acc,
            part_max,
            part_sum,
            num_splits,
            out.stride(0),
            out.stride(1),
            NUM_HEADS=num_heads,
            HEAD_DIM=head_dim,
            HEAD_DIM_PAD=head_dim_pad,
            SPLITS_PAD=triton.next_power_of_2(num_splits),
            num_warps=4,
            **launch_options(q),
        )


__all__ = ["AttentionTiles", "choose_num_kv_splits", "long_tiles", "paged_attention", "short_tiles"]
