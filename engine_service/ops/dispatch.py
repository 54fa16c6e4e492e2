"""Pick a kernel path per call: Triton for CUDA tensors, plain torch (`torch_ops`) otherwise.

Triton is imported on the first CUDA call, so CPU-only use never needs it installed. Both paths take the same
arguments and return the same values; two Triton functions also work in place (`fused_add_rms_norm` updates
`residual`, `rotary_embedding` rotates q and k), so callers must use the returned tensors and must not rely
on the inputs being either unchanged or updated.
"""

from __future__ import annotations

import functools
from types import ModuleType

import torch

from engine_service.ops import torch_ops


@functools.cache
def _triton_ops() -> ModuleType:
    try:
        from engine_service.ops import triton_ops
    except ImportError as exc:  # a CUDA tensor without triton installed
        raise RuntimeError(
            "CUDA tensors need the Triton kernels: install triton (pip install 'pagoda[gpu]')"
        ) from exc
    return triton_ops


def _on_gpu(t: torch.Tensor) -> bool:
    return t.is_cuda


def write_kv_cache(
    k: torch.Tensor,  # [T, Hkv, D]
    v: torch.Tensor,  # [T, Hkv, D]
    k_cache: torch.Tensor,  # [N, B, Hkv, D]
    v_cache: torch.Tensor,  # [N, B, Hkv, D]
    slot_mapping: torch.Tensor,  # int64 [T]; -1 = skip
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """An fp8 cache (float8_e4m3fn) stores k / k_scale and v / v_scale; other caches ignore the scales."""
    ops = _triton_ops() if _on_gpu(k_cache) else torch_ops
    ops.write_kv_cache(k, v, k_cache, v_cache, slot_mapping, k_scale, v_scale)


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
    out: torch.Tensor | None = None,  # [T, Hq, D]
    num_kv_splits: int | None = None,
    sliding_window: int | None = None,
    logit_softcap: float | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:  # [T, Hq, D]
    """Causal paged attention. max_query_len / max_seq_len are host-side upper bounds (launch-shape hints
    for the Triton path; see `triton_attention.paged_attention`); num_kv_splits fixes the KV split of a
    decode step (CUDA graphs). The torch path ignores the hints. sliding_window, logit_softcap and the fp8
    cache's k_scale / v_scale: see `torch_ops.paged_attention`."""
    mods = dict(sliding_window=sliding_window, logit_softcap=logit_softcap, k_scale=k_scale, v_scale=v_scale)
    if _on_gpu(q):
        return _triton_ops().paged_attention(
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
            **mods,
        )
    result = torch_ops.paged_attention(
        q, k_cache, v_cache, query_start_loc, seq_lens, block_tables, scale, **mods
    )
    if out is None:
        return result
    out.copy_(result)
    return out


GEMV_MAX_ROWS = 8  # decode batches up to here stream the weights through the Triton GEMV


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight^T + bias, as nn.functional.linear. A decode-sized product of a 16-bit model on CUDA (at
    most GEMV_MAX_ROWS rows) goes to the Triton GEMV: one kernel streaming the weights, where cuBLAS picks
    split-K with a second reduce kernel (benchmarks/gemv.py on an H200: as fast or faster on 11 of the 12
    llama decode shapes, up to 1.17x; 2-3 % slower on llama-8b's TP=1 gate_up)."""
    small = x.dim() == 2 and x.shape[0] <= GEMV_MAX_ROWS
    if x.is_cuda and small and x.dtype in (torch.bfloat16, torch.float16):
        return _triton_ops().gemv(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)


def fp8_linear(
    x: torch.Tensor,  # [..., K]
    weight: torch.Tensor,  # float8_e4m3fn [N, K]
    weight_scale: torch.Tensor,  # float32 [N] (per row) or [ceil(N/bn), ceil(K/bk)] (block)
    input_scale: torch.Tensor | None,  # float32 []: static activation scale; None: dynamic per token
    block: tuple[int, int] | None,  # (bn, bk) of a block-quantized weight
    bias: torch.Tensor | None = None,
) -> torch.Tensor:  # [..., N] in x's dtype
    """W8A8 FP8 product: torch._scaled_mm (per-row weight scales) or the Triton block GEMM on CUDA; the
    torch path emulates the same quantization of the activations in float32."""
    ops = _triton_ops() if _on_gpu(x) else torch_ops
    return ops.fp8_linear(x, weight, weight_scale, input_scale, block, bias)


def moe_topk(router_logits: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights float32 [T, k], expert ids int64 [T, k]) of a softmax router: its top k experts, their
    probabilities renormalized to sum to one when `renormalize`. One Triton launch on CUDA."""
    ops = _triton_ops() if _on_gpu(router_logits) else torch_ops
    return ops.moe_topk(router_logits, top_k, renormalize)


def fused_moe(
    x: torch.Tensor,  # [T, H]
    w13: torch.Tensor,  # [E, 2I, H]: each expert's gate rows, then its up rows
    w2: torch.Tensor,  # [E, H, I]
    topk_weights: torch.Tensor,  # float32 [T, k]
    topk_ids: torch.Tensor,  # int64 [T, k]
) -> torch.Tensor:  # [T, H]
    """Each token's k experts (SwiGLU MLPs), weighted and summed: the Triton sorted grouped GEMMs on CUDA
    (ops/triton_moe.py), an expert-by-expert loop otherwise."""
    ops = _triton_ops() if _on_gpu(x) else torch_ops
    return ops.fused_moe(x, w13, w2, topk_weights, topk_ids)


def vocab_slice_embedding(input_ids: torch.Tensor, weight: torch.Tensor, start: int) -> torch.Tensor:
    """The lookup of a rank's slice of the vocabulary: rows for the ids it holds, zeros for the others."""
    ops = _triton_ops() if _on_gpu(weight) else torch_ops
    return ops.vocab_slice_embedding(input_ids, weight, start)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    ops = _triton_ops() if _on_gpu(x) else torch_ops
    return ops.rms_norm(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual). The Triton path writes the sum into `residual` in place."""
    ops = _triton_ops() if _on_gpu(x) else torch_ops
    return ops.fused_add_rms_norm(x, residual, weight, eps)


def rotary_embedding(
    positions: torch.Tensor,  # int64 [T]
    q: torch.Tensor,  # [T, Hq, D]
    k: torch.Tensor,  # [T, Hkv, D]
    cos_sin_cache: torch.Tensor,  # float32 [max_positions, R]; R <= D (partial rotary: R < D)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Neox-style rotary embedding of each head's first R dimensions. The Triton path rotates q and k in
    place (and returns them)."""
    ops = _triton_ops() if _on_gpu(q) else torch_ops
    return ops.rotary_embedding(positions, q, k, cos_sin_cache)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate then up) -> silu(gate) * up: [T, I]."""
    ops = _triton_ops() if _on_gpu(x) else torch_ops
    return ops.silu_and_mul(x)


def gelu_tanh_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] (gate then up) -> gelu_tanh(gate) * up: [T, I] (Gemma's gated MLP)."""
    ops = _triton_ops() if _on_gpu(x) else torch_ops
    return ops.gelu_tanh_and_mul(x)


def sample_tokens(
    logits: torch.Tensor,  # [B, V], any float dtype
    temperature: torch.Tensor,  # float32 [B]; 0 = greedy
    seeds: torch.Tensor,  # int64 [B], in [0, 2^63)
    positions: torch.Tensor,  # int64 [B]
) -> torch.Tensor:  # int64 [B]
    """Greedy argmax or a Gumbel-max draw per row, the noise a pure function of (seed, position, column):
    both paths draw the same u (see `torch_ops.sample_tokens`). The Triton path never syncs with the host."""
    ops = _triton_ops() if _on_gpu(logits) else torch_ops
    return ops.sample_tokens(logits, temperature, seeds, positions)


__all__ = [
    "fp8_linear",
    "fused_add_rms_norm",
    "fused_moe",
    "gelu_tanh_and_mul",
    "linear",
    "moe_topk",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "sample_tokens",
    "silu_and_mul",
    "vocab_slice_embedding",
    "write_kv_cache",
]
