"""Builders for paged-attention test batches: random caches, scattered block tables, step metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedBatch:
    q: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor  # [N, B, Hkv, D]
    v_cache: torch.Tensor  # [N, B, Hkv, D]
    query_start_loc: torch.Tensor  # int32 [S + 1]
    seq_lens: torch.Tensor  # int32 [S]
    block_tables: torch.Tensor  # int32 [S, M]
    max_query_len: int
    max_seq_len: int

    def args(self) -> tuple:
        return (self.q, self.k_cache, self.v_cache, self.query_start_loc, self.seq_lens, self.block_tables)


def make_paged_batch(
    q_lens: list[int],
    seq_lens: list[int],
    *,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
    device: str | torch.device,
    seed: int = 0,
    spare_blocks: int = 3,
) -> PagedBatch:
    """Sequences get disjoint, shuffled blocks; unused block-table entries point far outside the cache, so a
    kernel that reads past a sequence's blocks faults or shows garbage instead of passing by luck."""
    g = torch.Generator().manual_seed(seed)  # layout on the CPU; values drawn where they live (GPU: fast)
    gd = torch.Generator(device=device).manual_seed(seed)
    num_seq_blocks = [(s + block_size - 1) // block_size for s in seq_lens]
    num_blocks = sum(num_seq_blocks) + spare_blocks
    width = max(num_seq_blocks + [0]) + 2
    block_tables = torch.full((len(seq_lens), width), 1 << 30, dtype=torch.int32)
    perm = torch.randperm(num_blocks, generator=g).to(torch.int32)
    used = 0
    for s, n in enumerate(num_seq_blocks):
        block_tables[s, :n] = perm[used : used + n]
        used += n
    shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gd, device=device).to(dtype)
    v_cache = torch.randn(shape, generator=gd, device=device).to(dtype)
    q = torch.randn((sum(q_lens), num_heads, head_dim), generator=gd, device=device).to(dtype)
    starts = [0]
    for n in q_lens:
        starts.append(starts[-1] + n)
    return PagedBatch(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=block_tables.to(device),
        max_query_len=max(q_lens + [0]),
        max_seq_len=max(seq_lens + [0]),
    )


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; NaN anywhere fails every bound."""
    out, ref = out.double(), ref.double()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))
