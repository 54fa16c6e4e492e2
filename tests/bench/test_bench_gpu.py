"""The benchmark's CUDA path: ceilings that look like the card, and floors that really are lower bounds."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_ceilings_look_like_a_hopper_card():
    from pagoda.bench.roofline import measure_ceilings

    card = measure_ceilings()
    # H100 / H200 (FACTS.md): about 790 TFLOP/s bf16, 3.0 / 4.3 TB/s copy
    assert 200e12 < card.matmul_flops_per_s < 1200e12, card
    assert 1e12 < card.copy_bytes_per_s < 6e12, card


def test_no_engine_beats_the_floor(tmp_path):
    from pagoda.bench import throughput

    argv = [
        "--shape",
        "llama-1b",
        "--num-prompts",
        "64",
        "--input-len",
        "128",
        "--output-len",
        "32",
        "--decode-batch-sizes",
        "1,64",
        "--decode-tokens",
        "16,80",
        "--results-dir",
        str(tmp_path),
        "--model-dir",
        str(tmp_path / "model"),
        "--commit",
        "test",
    ]
    assert throughput.main(argv) == 0
    record = json.loads((tmp_path / "results.jsonl").read_text())
    assert 0 < record["efficiency"] <= 1, record["roofline"]
    assert record["itl_bs1_ms"] >= record["itl_bs1_floor_ms"] > 0
    steps = record["pagoda"]["decode_step_ms"]
    assert steps["64"] > 0
