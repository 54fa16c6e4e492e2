"""Benchmark figures: percentiles, an engine's result, and the offline run's line in RESULTS.md."""

from __future__ import annotations

from benchmarks import results
from pagoda.bench import report


def test_percentiles_nearest_rank():
    seconds = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    assert report.percentiles_ms(seconds) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "mean": 50.5}
    assert report.percentiles_ms([0.002]) == {"p50": 2.0, "p90": 2.0, "p99": 2.0, "mean": 2.0}
    assert report.percentiles_ms([]) is None


def test_engine_result_rates():
    r = report.engine_result(
        engine="x",
        startup_s=1.234,
        elapsed_s=2.0,
        num_prompts=2,
        num_prompt_tokens=1000,
        num_output_tokens=500,
        max_num_seqs=256,
        max_num_batched_tokens=8192,
    )
    assert (r["out_tok_s"], r["total_tok_s"], r["startup_s"]) == (250.0, 750.0, 1.23)
    assert r["ttft_ms"] is None and r["decode_step_ms"] == {}


def _record(**overrides):
    record = {
        "date": "2026-11-27T08:00:00+00:00",
        "card": "NVIDIA H200",
        "commit": "0123456789abcdef",
        "shape": "llama-1b",
        "workload": {
            "name": "shared-prefix",
            "num_prompts": 1000,
            "input_len": 512,
            "output_len": 256,
            "range_ratio": 0.5,
            "prefix_len": 1024,
            "seed": 0,
        },
        "prefix_caching": False,
        "out_tok_s": 21000.4,
        "total_tok_s": 147000.0,
        "efficiency": 0.2512,
        "itl_bs1_ms": 1.234,
        "itl_bs1_floor_ms": 0.578,
        "itl_bs256_ms": None,
        "itl_bs256_floor_ms": None,
        "pagoda": {"startup_s": 12.3, "ttft_ms": {"p50": 1500.0}, "tpot_ms": {"p50": 9.87}},
        "peer": {"vllm": {"out_tok_s": 20034.0, "efficiency": 0.2}, "hf_static": {"error": "exit status 1"}},
    }
    return record | overrides


def markdown_row(record: dict) -> str:
    return "| " + " | ".join(results.throughput_cells(record)) + " |"


def test_markdown_row():
    row = markdown_row(_record())
    assert row == (
        "| 2026-11-27 | NVIDIA H200 | 01234567 | llama-1b | shared-prefix 1000×(1024+512)/256 cache off "
        "| 21,000 | 147,000 | 0.25 | 1,500.0 | 9.87 | 1.23 (0.58) | – (–) | 12.3 | 20,034 (0.20) "
        "| error | – |"
    )
    assert row.count("|") == len(results.TABLES[0].columns.split(" | ")) + 1
    random = _record(
        workload={
            "name": "random",
            "num_prompts": 10,
            "input_len": 512,
            "output_len": 256,
            "range_ratio": 0.5,
            "prefix_len": 1024,
            "seed": 0,
        }
    )
    assert "random 10×256–768/128–384" in markdown_row(random)


def test_settings_and_notes_go_to_the_shape_cell():
    record = _record(shape="llama-8b", note="second call, warm machine")
    record["settings"] = {"tensor_parallel_size": 2, "custom_all_reduce": True, "max_num_seqs": 256}
    row = markdown_row(record)
    assert "| llama-8b, TP=2 custom all-reduce, max_num_seqs 256, second call, warm machine |" in row
