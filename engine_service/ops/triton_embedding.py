"""Embedding lookup over this rank's slice of the vocabulary (tensor parallelism), in one kernel.

Each rank holds rows [start, start + rows) of the table: a token inside the slice gets its row, any other
token zeros, so the ranks' outputs sum to the full lookup. The torch path spends six small kernels on it
(shift, two compares, and, clamp, lookup, mask multiply); one program per token does it here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine_service.ops.triton_pdl import launch_options, wait_for_previous


@triton.jit
def _vocab_slice_embedding_kernel(
    out_ptr, ids_ptr, weight_ptr, start, rows, HIDDEN: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr
):
    if PDL:
        wait_for_previous()
    t = tl.program_id(0)
    local = tl.load(ids_ptr + t) - start
    inside = (local >= 0) & (local < rows)
    readable = tl.where(inside, HIDDEN, 0)  # how much of the row to read: all of it, or none
    row = weight_ptr + local.to(tl.int64) * HIDDEN
    offs = tl.arange(0, BLOCK)
    for h in tl.static_range(0, HIDDEN, BLOCK):
        mask = offs + h < HIDDEN
        values = tl.load(row + h + offs, mask=offs + h < readable, other=0.0)
        tl.store(out_ptr + t.to(tl.int64) * HIDDEN + h + offs, values, mask=mask)


def vocab_slice_embedding(input_ids: torch.Tensor, weight: torch.Tensor, start: int) -> torch.Tensor:
    """input_ids [T] -> [T, hidden]: weight[id - start] for the ids in [start, start + rows), zeros else."""
    rows, hidden = weight.shape
    out = torch.empty(input_ids.shape[0], hidden, dtype=weight.dtype, device=weight.device)
    if input_ids.shape[0]:
        block = min(triton.next_power_of_2(hidden), 4096)
        _vocab_slice_embedding_kernel[(input_ids.shape[0],)](
            out,
            input_ids,
            weight,
            start,
            rows,
            HIDDEN=hidden,
            BLOCK=block,
            num_warps=4,
            **launch_options(weight),
        )
    return out
