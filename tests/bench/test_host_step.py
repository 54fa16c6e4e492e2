"""benchmarks/host_step.py runs the engine loop without a model and records its host work per step."""

from __future__ import annotations

import json

from benchmarks import host_step
from engine_service.ops import dispatch


def test_host_step_records_a_steady_decode_and_the_whole_workload(tmp_path, capsys):
    argv = ["--batch", "8", "--steps", "20", "--num-prompts", "20", "--results-dir", str(tmp_path)]
    assert host_step.main(argv + ["--commit", "test"]) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["kind"] == "host_step" and record["batch"] == 8 and record["commit"] == "test"
    assert record["decode_us_per_step"]["step"] > 0 and record["decode_us_per_step"]["pack"] > 0
    # 20 prompts of 512 tokens, 256 generated each, 8 at a time: at least 20 * 256 / 8 steps.
    assert record["workload_steps"] >= 20 * 256 // 8 and record["workload_host_s"] > 0
    assert "lambda" not in dispatch.sample_tokens.__qualname__  # no product function is patched


def test_the_model_stand_in_is_served_through_the_registry(tmp_path):
    """The engine builds the benchmark's no-work model from config.json, as it would any architecture: its
    logits are zeros, so every greedy token is 0."""
    from engine_service import LLM, SamplingParams

    host_step.write_model_dir(str(tmp_path))
    llm = LLM(str(tmp_path), device="cpu", dtype="float32", load_format="dummy", num_kv_blocks=16)
    assert llm.engine.model_config.architecture == host_step.ARCHITECTURE
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    (out,) = llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=params)
    assert out.outputs[0].token_ids == [0, 0, 0, 0]
