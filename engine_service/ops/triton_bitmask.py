"""Grammar masks (Triton): `torch_ops.apply_token_bitmask` in place, one program per (row, block of columns).

Each program reads BLOCK / 32 words of its row's bitmask and writes -inf over the columns whose bit is 0;
allowed columns are not touched, so a JSON grammar's few hundred allowed tokens cost almost nothing to
keep and the rest one store each. Rows that no grammar constrains get no program.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 2048  # columns per program: 64 words of the bitmask


@triton.jit
def _apply_token_bitmask_kernel(
    logits_ptr,  # [B, V]
    bits_ptr,  # int32 [R, W]
    rows_ptr,  # int64 [R]
    V,
    logits_stride,
    bits_stride,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    in_vocab = cols < V
    row = tl.load(rows_ptr + r)
    words = tl.load(bits_ptr + r * bits_stride + cols // 32, mask=in_vocab, other=-1)
    banned = ((words >> (cols % 32)) & 1) == 0
    neg_inf = tl.full([BLOCK], float("-inf"), tl.float32).to(logits_ptr.dtype.element_ty)
    tl.store(logits_ptr + row * logits_stride + cols, neg_inf, mask=in_vocab & banned)


def apply_token_bitmask(logits: torch.Tensor, bits: torch.Tensor, rows: torch.Tensor) -> None:
    """As `torch_ops.apply_token_bitmask`; `logits` must have unit column stride."""
    assert logits.stride(1) == 1, "the logits' columns must be contiguous"
    R, V = len(rows), logits.shape[1]
    if R == 0:
        return
    grid = (R, triton.cdiv(V, BLOCK))
    _apply_token_bitmask_kernel[grid](logits, bits, rows, V, logits.stride(0), bits.stride(0), BLOCK=BLOCK)
