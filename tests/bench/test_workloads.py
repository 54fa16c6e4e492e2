"""Workloads: seeded, the lengths they promise, and the shared prefix really shared."""

from __future__ import annotations

import pytest

from pagoda.bench import workloads
from pagoda.bench.shapes import SHAPES, shape_config, write_model_dir
from pagoda.bench.workloads import WorkloadSpec


def test_fixed_workload_is_seeded():
    spec = WorkloadSpec("fixed", num_prompts=20, input_len=32, output_len=8)
    a, b = workloads.build(spec, 1000), workloads.build(spec, 1000)
    assert a == b
    assert all(len(r.prompt_token_ids) == 32 and r.max_tokens == 8 for r in a)
    assert workloads.build(WorkloadSpec("fixed", 20, 32, 8, seed=1), 1000) != a
    ids = [t for r in a for t in r.prompt_token_ids]
    assert min(ids) >= 100 and max(ids) < 900  # away from the vocabulary's special ends
    assert len({tuple(r.prompt_token_ids[:16]) for r in a}) == 20  # no accidental shared first block


def test_random_lengths_stay_in_the_stated_ranges():
    spec = WorkloadSpec("random", num_prompts=400, input_len=512, output_len=256)
    requests = workloads.build(spec, 128256)
    ins = [len(r.prompt_token_ids) for r in requests]
    outs = [r.max_tokens for r in requests]
    assert 256 <= min(ins) < 300 and 720 < max(ins) <= 768
    assert 128 <= min(outs) < 150 and 360 < max(outs) <= 384
    assert (spec.max_prompt_len, spec.max_output_len) == (768, 384)


def test_shared_prefix_workload():
    spec = WorkloadSpec("shared-prefix", num_prompts=10, input_len=64, output_len=4, prefix_len=1024)
    requests = workloads.build(spec, 151936)
    prefix = requests[0].prompt_token_ids[:1024]
    assert all(r.prompt_token_ids[:1024] == prefix for r in requests)
    assert len({tuple(r.prompt_token_ids[1024:1040]) for r in requests}) == 10
    assert spec.max_prompt_len == 1088 and spec.shared_prefix_len == 1024
    assert WorkloadSpec("fixed").shared_prefix_len == 0


def test_warmup_and_probe_prompts_share_nothing_with_the_workload():
    requests = workloads.build(WorkloadSpec("shared-prefix", 4, 16, 4, prefix_len=32), 5000)
    firsts = {tuple(r.prompt_token_ids[:16]) for r in requests}
    assert not firsts & {tuple(p[:16]) for p in workloads.warmup_prompts(8, 16, 5000)}
    assert not firsts & {tuple(p[:16]) for p in workloads.decode_probe_prompts(8, 16, 5000)}


def test_decode_step_probe_takes_the_difference():
    calls = []

    def fake_generate(prompts, max_tokens):  # 100 ms of prefill, 2 ms a step at batch 1, 5 ms at batch 4
        calls.append((len(prompts), max_tokens))
        return 0.1 + max_tokens * (0.002 if len(prompts) == 1 else 0.005)

    steps = workloads.probe_decode_steps(fake_generate, [1, 4], (32, 160), prompt_len=8, vocab_size=500)
    assert steps == {"1": pytest.approx(2.0), "4": pytest.approx(5.0)}
    assert calls == [(1, 32), (1, 32), (1, 160), (4, 32), (4, 32), (4, 160)]  # untimed short run first
    with pytest.raises(ValueError):
        workloads.decode_step_ms(1.0, 2.0, 10, 10)


@pytest.mark.parametrize(
    "bad", [dict(name="bursty"), dict(name="fixed", num_prompts=0), dict(name="random", range_ratio=1.0)]
)
def test_bad_specs_are_refused(bad):
    with pytest.raises(ValueError):
        WorkloadSpec(**bad)


def test_model_dir_holds_the_config(tmp_path):
    import json

    path = write_model_dir("qwen-0.5b", tmp_path / "m")
    assert json.loads((path / "config.json").read_text()) == SHAPES["qwen-0.5b"]
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == 151643
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "generation_config.json"]
    with pytest.raises(ValueError, match="unknown shape"):
        shape_config("llama-405b")
