"""The Triton kernels of the CUDA path, behind the signatures of `torch_ops`.

Differences from `torch_ops`, all documented at each function:
  - `paged_attention` takes host-side hints (`max_query_len`, `max_seq_len`), an optional `out` and an
    optional fixed `num_kv_splits` (CUDA graphs), and never syncs with the host.
  - `fused_add_rms_norm` updates `residual` in place; `rotary_embedding` rotates q and k in place.
  - `sample_tokens` takes an optional `num_splits` (vocab splits per row) and never syncs with the host.
Importing this module imports triton; `dispatch` imports it only when a CUDA tensor shows up.
"""

from engine_service.ops.triton_activation import gelu_tanh_and_mul, silu_and_mul
from engine_service.ops.triton_attention import choose_num_kv_splits, paged_attention
from engine_service.ops.triton_embedding import vocab_slice_embedding
from engine_service.ops.triton_fp8 import fp8_linear
from engine_service.ops.triton_gemv import gemv
from engine_service.ops.triton_kv_cache import write_kv_cache
from engine_service.ops.triton_moe import fused_moe, moe_topk
from engine_service.ops.triton_norm import fused_add_rms_norm, rms_norm
from engine_service.ops.triton_rotary import rotary_embedding
from engine_service.ops.triton_sampling import sample_tokens

__all__ = [
    "choose_num_kv_splits",
    "fp8_linear",
    "fused_add_rms_norm",
    "fused_moe",
    "gelu_tanh_and_mul",
    "gemv",
    "moe_topk",
    "paged_attention",
    "rms_norm",
    "rotary_embedding",
    "sample_tokens",
    "silu_and_mul",
    "vocab_slice_embedding",
    "write_kv_cache",
]
