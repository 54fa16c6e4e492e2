"""Greedy tokens and logprobs equal transformers' for Gemma 2/3, Phi-3, the mixtures of experts and a yarn
rope: in one batch from a sharded checkpoint, and through chunked prefill, prefix-cache hits and
preemption. Gemma's sliding layers and Phi-3's window (8 keys) are run well past the window."""

from __future__ import annotations

import json

import pytest
from arch_models import CONFIGS, WINDOW, make_arch_model
from test_parity_hf import check, prompts_of

from engine_service import LLM

ARCHS = list(CONFIGS)


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory):
    built = {}

    def get(arch: str):
        if arch not in built:
            folder = tmp_path_factory.mktemp(f"arch-{arch}")
            built[arch] = (folder, make_arch_model(folder, arch, max_shard_size="100KB"))
        return built[arch]

    return get


@pytest.mark.parametrize("arch", ARCHS)
def test_batch_from_a_sharded_checkpoint(arch_models, arch):
    folder, model = arch_models(arch)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=64)
    check(llm, model, prompts_of([1, 5, 3 * WINDOW + 1, 40], seed=len(arch)))


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_prefix_hits_and_preemption(arch_models, arch):
    folder, model = arch_models(arch)
    llm = LLM(
        str(folder),
        device="cpu",
        dtype="float32",
        num_kv_blocks=14,
        block_size=4,
        max_num_batched_tokens=9,
        max_model_len=64,
    )
    shared = prompts_of([20], seed=7)[0]
    check(llm, model, prompts_of([13, 9, 15], seed=3) + [shared + [5, 6], shared + [7]])
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.block_manager.num_hit_tokens > 0
