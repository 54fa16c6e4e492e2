"""Compile every Triton kernel variant the launchers pick, for sm_90 (H100/H200), on a machine with no GPU.

The interpreter runs kernels as numpy and misses what only the compiler rejects (a non-constexpr global, a
type change across a loop, a dot shape below the hardware minimum). This script runs the real host-side
launchers on CPU tensors with each kernel swapped for a recorder, then compiles what was recorded with
Triton's own compiler and ptxas, and prints what the compiled code uses (tensor-core ops, async copies).

Run it without TRITON_INTERPRET: `python tests/kernels/sm90_compile.py` (test_kernels_compile.py does).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from engine_service.ops import (  # noqa: E402
    triton_activation,
    triton_all_reduce_norm,
    triton_attention,
    triton_embedding,
    triton_gemv,
    triton_kv_cache,
    triton_norm,
    triton_pdl,
    triton_rotary,
)

_DTYPES = {
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.float32: "fp32",
    torch.int32: "i32",
    torch.int64: "i64",
}


@dataclass
class Recorder:
    """Stands in for a JITFunction: `kernel[grid](*args, **kwargs)` records the call instead of launching."""

    fn: triton.runtime.jit.JITFunction
    calls: list = field(default_factory=list)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append((args, kwargs))


def _signature(fn, args, kwargs):
    """The (signature, constexprs, attrs, options) Triton's launcher would derive from these arguments."""
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "launch_pdl") if k in kwargs}
    values = dict(zip(fn.arg_names, args, strict=False)) | kwargs
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        value = values[param.name]
        # Triton specializes ints equal to 1 into constants, unless told not to.
        if param.is_constexpr or (type(value) is int and value == 1 and i not in fn.do_not_specialize):
            signature[param.name] = "constexpr"
            constexprs[(i,)] = value
            continue
        if isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _DTYPES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # the caching allocator aligns every tensor
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and i not in fn.do_not_specialize:
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[param.name] = "fp32"
    return signature, constexprs, attrs, options


def _scenarios():
    """Host calls covering each launch shape (decode, split decode, mixed; two head dims; fp32 models on
    CUDA too) and the other kernels."""
    bf16 = torch.bfloat16
    for head_dim, group, dtype in ((128, 4, bf16), (64, 3, bf16), (128, 4, torch.float32)):
        kv_heads = 8 if group != 3 else 3
        heads = kv_heads * group
        k_cache = torch.empty(64, 16, kv_heads, head_dim, dtype=dtype)
        block_tables = torch.zeros(4, 16, dtype=torch.int32)
        seq_lens = torch.full((4,), 100, dtype=torch.int32)
        qsl = torch.tensor([0, 1, 2, 3, 4], dtype=torch.int32)
        q = torch.empty(4, heads, head_dim, dtype=dtype)
        attention = triton_attention.paged_attention
        attention(q, k_cache, k_cache, qsl, seq_lens, block_tables, 0.1, max_query_len=1, max_seq_len=100)
        attention(q, k_cache, k_cache, qsl, seq_lens, block_tables, 0.1, max_query_len=1, max_seq_len=8192,
                  num_kv_splits=16)  # fmt: skip
        q = torch.empty(300, heads, head_dim, dtype=dtype)
        qsl = torch.tensor([0, 1, 2, 299, 300], dtype=torch.int32)
        attention(q, k_cache, k_cache, qsl, seq_lens, block_tables, 0.1, max_query_len=297, max_seq_len=400)
    k = torch.empty(8, 8, 128, dtype=bf16)
    triton_kv_cache.write_kv_cache(k, k, k_cache.new_empty(64, 16, 8, 128), k_cache.new_empty(64, 16, 8, 128),
                                   torch.zeros(8, dtype=torch.int64))  # fmt: skip
    x = torch.empty(8, 4096, dtype=bf16)
    triton_norm.rms_norm(x, x[0], 1e-5)
    triton_norm.fused_add_rms_norm(x, x.clone(), x[0], 1e-5)
    qkv = torch.empty(8, 48, 128, dtype=bf16)
    triton_rotary.rotary_embedding(torch.zeros(8, dtype=torch.int64), qkv[:, :32], qkv[:, 32:40],
                                   torch.empty(4096, 128))  # fmt: skip
    triton_activation.silu_and_mul(torch.empty(8, 2 * 14336, dtype=bf16))
    triton_embedding.vocab_slice_embedding(
        torch.zeros(8, dtype=torch.int64), torch.empty(64128, 4096, dtype=bf16), 64128
    )
    ptrs, counters = torch.zeros(2, dtype=torch.int64), torch.zeros(64, dtype=torch.int64)
    fused = triton_all_reduce_norm.all_reduce_add_rms_norm
    for rank in (0, 1):  # rank 1 is specialized into a constant
        fused(x, x.clone(), x[0], 1e-5, ptrs, counters, rank, 2)
    for n, k in ((28672, 4096), (3072, 4096), (2048, 8192)):  # plain and split-K configs, with a bias
        w = torch.empty(n, k, dtype=bf16)
        triton_gemv.gemv(torch.empty(1, k, dtype=bf16), w, w[:, 0].contiguous())
    triton_gemv.gemv(torch.empty(8, 2048), torch.empty(2048, 2048))  # an fp32 model


def _registers(cubin: bytes) -> str:
    """Registers per thread and stack bytes, from the cuobjdump that ships with Triton."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not tool.exists():
        return "regs=?"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        usage = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True).stdout
    regs, stack = re.search(r"REG:(\d+)", usage), re.search(r"STACK:(\d+)", usage)
    return f"regs={regs.group(1) if regs else '?'} stack={stack.group(1) if stack else '?'}"


_SHOWN = (
    "GROUP HEAD_DIM BLOCK_M TILE_N SEQ_GRID SPLIT DOT_PRECISION BLOCK_N BLOCK_K PDL".split()
)  # printed constexprs

KERNELS = [
    (triton_attention, "_paged_attention_kernel"),
    (triton_attention, "_reduce_splits_kernel"),
    (triton_kv_cache, "_write_kv_cache_kernel"),
    (triton_norm, "_rms_norm_kernel"),
    (triton_rotary, "_rotary_kernel"),
    (triton_activation, "_silu_and_mul_kernel"),
    (triton_all_reduce_norm, "_all_reduce_add_rms_norm_kernel"),
    (triton_gemv, "_gemv_kernel"),
    (triton_embedding, "_vocab_slice_embedding_kernel"),
]


def main() -> int:
    recorders = {}
    for module, name in KERNELS:
        fn = getattr(module, name)
        assert isinstance(fn, triton.runtime.jit.JITFunction), (
            f"{name} is not compiled: unset TRITON_INTERPRET"
        )
        recorders[name] = Recorder(fn)
        setattr(module, name, recorders[name])
    use_pdl = triton_pdl.use_pdl
    try:
        _scenarios()  # CPU tensors: launched without PDL
        triton_pdl.use_pdl = lambda t: True  # as on an sm_90 GPU
        _scenarios()
    finally:
        triton_pdl.use_pdl = use_pdl
        for module, name in KERNELS:
            setattr(module, name, recorders[name].fn)

    target = GPUTarget("cuda", 90, 32)
    seen = set()
    for name, recorder in recorders.items():
        assert recorder.calls, f"no scenario launched {name}"
        for args, kwargs in recorder.calls:
            signature, constexprs, attrs, options = _signature(recorder.fn, args, kwargs)
            key = (name, repr(sorted(signature.items())), repr(sorted(constexprs.items())), repr(options))
            if key in seen:
                continue
            seen.add(key)
            src = ASTSource(recorder.fn, signature, constexprs=constexprs, attrs=attrs)
            compiled = triton.compile(src, target=target, options=options)
            ptx = compiled.asm["ptx"]
            shown = {
                recorder.fn.arg_names[i]: v
                for (i,), v in constexprs.items()
                if recorder.fn.arg_names[i] in _SHOWN
            }
            print(
                f"{name:24s} {shown} {options} shared={compiled.metadata.shared}B "
                f"{_registers(compiled.asm['cubin'])} "
                f"wgmma={ptx.count('wgmma.mma_async')} mma.sync={ptx.count('mma.sync')} "
                f"cp.async={ptx.count('cp.async.cg') + ptx.count('cp.async.ca')} "
                f"ld.v4={ptx.count('ld.global.v4') + ptx.count('ld.global.nc.v4')} "
                f"local={ptx.count('ld.local') + ptx.count('st.local')} "
                f"atom.sys={ptx.count('.sys')} "
                f"gdc.wait={ptx.count('griddepcontrol.wait')}"
            )
    print(f"compiled {len(seen)} kernel variants for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
