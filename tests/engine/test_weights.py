"""Checkpoints: sharded safetensors, other dtypes, random (dummy) weights, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from engine_service import LLM, SamplingParams

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
PROMPTS = [[5, 6, 7, 8], [9, 10]]


def test_sharded_checkpoint_loads_like_a_single_file(tmp_path, tiny_model_factory):
    model = tiny_model_factory(tmp_path / "single", "llama")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    single = LLM(str(tmp_path / "single"), device="cpu", dtype="float32", num_kv_blocks=32)
    sharded = LLM(str(tmp_path / "sharded"), device="cpu", dtype="float32", num_kv_blocks=32)
    a = [o.outputs[0].token_ids for o in single.generate(prompt_token_ids=PROMPTS, sampling_params=GREEDY)]
    b = [o.outputs[0].token_ids for o in sharded.generate(prompt_token_ids=PROMPTS, sampling_params=GREEDY)]
    assert a == b


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_on_cpu(tiny_llama, dtype):
    llm = LLM(str(tiny_llama), device="cpu", dtype=dtype, num_kv_blocks=32)
    assert llm.engine.runner.kv_caches[0][0].dtype == getattr(torch, dtype)
    out = llm.generate(prompt_token_ids=PROMPTS, sampling_params=GREEDY)
    assert all(len(o.outputs[0].token_ids) == 8 for o in out)


def test_dummy_weights_need_only_config(tmp_path, tiny_llama):
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", load_format="dummy", num_kv_blocks=32)
    out = llm.generate(prompt_token_ids=PROMPTS, sampling_params=GREEDY)
    assert all(len(o.outputs[0].token_ids) == 8 for o in out)


def test_missing_weights_is_a_clear_error(tmp_path, tiny_llama):
    (tmp_path / "config.json").write_text((tiny_llama / "config.json").read_text())
    with pytest.raises(ValueError, match="has no \\*.safetensors weights"):
        LLM(str(tmp_path), device="cpu", num_kv_blocks=32)
