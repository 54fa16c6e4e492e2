"""Kernel tests run the Triton kernels through Triton's CPU interpreter when there is no GPU.

TRITON_INTERPRET must be set before any @triton.jit function is defined, so it is set here, before the
test modules (which import the kernels) are collected. With a GPU the same tests run compiled on CUDA.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
