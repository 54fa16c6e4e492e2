"""`pagoda bench grpc` on CPU: 64 concurrent streams on a tiny model all complete; the figure is recorded."""

from __future__ import annotations

import json

import pytest

from benchmarks import results
from pagoda.bench import grpc_throughput


@pytest.mark.parametrize("client_processes", [1, 2])
def test_64_streams_on_cpu_complete_and_are_recorded(tmp_path, client_processes):
    argv = [
        "--shape",
        "tiny",
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--num-prompts",
        "64",
        "--input-len",
        "32",
        "--output-len",
        "16",
        "--concurrency",
        "64",
        "--results-dir",
        str(tmp_path),
        "--model-dir",
        str(tmp_path / "tiny"),
        "--commit",
        "test",
        "--client-processes",
        str(client_processes),
    ]
    assert grpc_throughput.main(argv) == 0
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    g = record["grpc"]
    assert (record["kind"], record["engine_core"], record["concurrency"]) == ("grpc", "process", 64)
    assert (g["num_incomplete"], g["num_errors"], g["num_output_tokens"]) == (0, 0, 64 * 16)
    assert g["server_exit_status"] == 0 and g["client_processes"] == client_processes
    occupancy = g["occupancy"]  # GetServerInfo polled during the run saw the streams running
    assert occupancy["num_polls"] > 0 and 0 < occupancy["mean_running"] <= 64
    # Engine steps of the timed run, from GetServerInfo: each sampled at most 64 sequences (the streams).
    assert g["num_output_tokens"] / 64 <= occupancy["num_steps"] <= g["num_output_tokens"] + 16
    assert record["offline"]["num_steps"] >= g["num_output_tokens"] / 64
    # The offline run again at the streams' batch limit (64 < the default 512), with its own ratio.
    same = record["offline_same_batch"]
    assert same["max_num_seqs"] == 64 and record["offline"]["max_num_seqs"] == 512
    assert record["ratio_same_batch"] == round(g["out_tok_s"] / same["out_tok_s"], 4)
    assert record["offline_out_tok_s"] > 0 and record["ratio"] == round(
        g["out_tok_s"] / record["offline_out_tok_s"], 4
    )
    core = "process" if client_processes == 1 else f"process, {client_processes} clients"
    assert f"| tiny | fixed 64×32/16 | {core} | 64 |" in results.results_markdown([record])


def test_grpc_rows_go_to_their_own_table():
    record = {
        "kind": "grpc",
        "date": "2026-11-27T00:00:00",
        "card": "cpu",
        "commit": "c0ffee",
        "shape": "tiny",
        "workload": {"name": "fixed", "num_prompts": 2, "input_len": 3, "output_len": 4},
        "prefix_caching": True,
        "engine_core": "thread",
        "concurrency": 2,
        "out_tok_s": 10.0,
        "offline_out_tok_s": 20.0,
        "ratio": 0.5,
        "grpc": {"stream_interval": 1},
    }
    offline = {"kind": "throughput", "date": "2026-11-27", "card": "cpu", "commit": "abc", "shape": "tiny",
               "workload": record["workload"], "out_tok_s": 20.0, "pagoda": {}, "peer": {}}  # fmt: skip
    text = results.results_markdown([record, offline, record])
    assert (
        text.count("| 2026-11-27 | cpu | c0ffee | tiny | fixed 2×3/4 | thread | 2 | 10 | 20 | 0.500 |") == 2
    )
    offline_table, grpc_table = text.index("## Offline throughput"), text.index("## Streaming through")
    assert offline_table < grpc_table < text.index("c0ffee")  # each kind in its own table
    assert text.index("| abc |") < grpc_table


def test_rounds_summary_gives_the_median_of_each_ratio():
    records = [
        {"engine_core": "process", "ratio": r, "ratio_same_batch": q}
        for r, q in ((0.9, 1.0), (0.8, None), (1.1, 0.95))
    ]
    summary = grpc_throughput.rounds_summary(records)
    assert summary.startswith("gRPC (process) over 3 rounds: vs offline: median 0.900 of [0.8, 0.9, 1.1]")
    assert "vs offline at the streams' batch: median 0.975 of [0.95, 1.0]" in summary
