"""Every kernel variant the launchers pick compiles for sm_90 (H100/H200) on this GPU-less machine, with
the memory habits the design counts on: async (cp.async) K/V loads in the attention loop, tensor-core
wgmma in the prefill shape, no register spills (stack frame) anywhere, and in every kernel launched with PDL
one wait for the kernel before it."""

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("sm90_compile.py")


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("_")]
    assert lines, proc.stdout
    for line in lines:
        assert "local=0" in line and "stack=0" in line, f"spills to local memory: {line}"
        if line.startswith("_paged_attention_kernel"):
            assert not re.search(r"cp\.async=0\b", line), f"K/V loads not pipelined: {line}"
            if "'BLOCK_M': 128" in line:
                assert not re.search(r"wgmma=0\b", line), f"prefill shape misses wgmma: {line}"
        # Launched with PDL, a kernel waits once for the one before it (ops/triton_pdl.py); without, never.
        pdl = "'launch_pdl': True" in line
        assert line.endswith(f"gdc.wait={int(pdl)}"), f"PDL launch and wait disagree: {line}"
    launched_with_pdl = {line.split()[0] for line in lines if "'launch_pdl': True" in line}
    assert launched_with_pdl == {line.split()[0] for line in lines}, "a kernel never launches with PDL"
