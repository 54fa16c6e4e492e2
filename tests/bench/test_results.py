"""One function records every result (pagoda.bench.results.record_result); benchmarks.results builds
RESULTS.md and PERFORMANCE.md from the rows."""

from __future__ import annotations

import json

import pytest

from benchmarks import results
from pagoda.bench.results import record_result


def test_record_result_appends_one_stamped_line(tmp_path):
    first = record_result({"commit": "abc", "kind": "host_step", "batch": 8}, tmp_path / "new")
    record_result(
        {"kind": "host_step", "commit": "def", "date": "2026-01-02T00:00:00+00:00"}, tmp_path / "new"
    )
    lines = (tmp_path / "new" / "results.jsonl").read_text().splitlines()
    assert [list(json.loads(line))[:3] for line in lines] == [["kind", "date", "commit"]] * 2
    assert json.loads(lines[0]) == first and first["batch"] == 8 and first["date"].startswith("20")
    assert json.loads(lines[1])["date"] == "2026-01-02T00:00:00+00:00"  # a row's own date stays


@pytest.mark.parametrize("row", [{"commit": "abc"}, {"kind": "gemv"}, {"kind": "gemv", "commit": ""}])
def test_a_row_without_kind_or_commit_is_refused(tmp_path, row):
    with pytest.raises(ValueError, match="a results row needs"):
        record_result(row, tmp_path)
    assert not (tmp_path / "results.jsonl").exists()


def test_the_committed_tables_are_what_the_rows_give():
    """benchmarks/RESULTS.md and docs/PERFORMANCE.md are generated: `python -m benchmarks.results`."""
    assert results.main(["--check"]) == 0


def host_row(commit: str, date: str, total: float) -> dict:
    per_step = {"step": total - 10, "pack": 10.0}
    return {"kind": "host_step", "date": date, "machine": "x86_64", "commit": commit, "batch": 256,
            "decode_us_per_step": per_step, "decode_us_per_step_total": total}  # fmt: skip


def test_tables_are_newest_first_and_unknown_kinds_still_show():
    rows = [
        host_row("old", "2026-11-27T10:00:00+00:00", 900.0),
        host_row("new-day", "2026-11-28", 700.0),  # a later day comes first, whatever its time
        host_row("later", "2026-11-27T12:00:00+00:00", 800.0),
        {"kind": "someday_probe", "date": "2026-11-27", "commit": "x1", "card": "cpu", "us": 3.5},
    ]
    text = results.results_markdown(rows)
    assert text.index("| new-day |") < text.index("| later |") < text.index("| old |")
    assert "## Host work per step" in text and "## Offline throughput" not in text  # no rows, no table
    assert "| 2026-11-27 | cpu | x1 | someday_probe | us 3.5 |" in text


def throughput_row(commit: str, tp: int, out_tok_s: float, step_ms: float, **extra) -> dict:
    workload = {"name": "fixed", "num_prompts": 500, "input_len": 512, "output_len": 256}
    settings = {"tensor_parallel_size": tp, "custom_all_reduce": True}
    pagoda = {"startup_s": 5.0, "out_tok_s": out_tok_s}
    return {"kind": "throughput", "date": "2026-11-27", "card": "NVIDIA H200", "commit": commit,
            "shape": "llama-8b", "workload": workload, "prefix_caching": True, "out_tok_s": out_tok_s,
            "itl_bs1_ms": step_ms, "pagoda": pagoda, "peer": {}, "settings": settings, **extra}  # fmt: skip


def test_tensor_parallelism_answers_with_the_newest_call_and_its_tp1_run():
    rows = [
        throughput_row("c1", 1, 9000.0, 4.5),
        throughput_row("c1", 2, 13000.0, 3.0),
        throughput_row("c2", 1, 9500.0, 4.4),
        throughput_row("c2", 2, 16000.0, 2.75),
    ]
    text = results.performance_markdown(rows)
    section = text[text.index("## Tensor parallelism") : text.index("## Start-up")]
    (line,) = [line for line in section.splitlines() if line.startswith("| NVIDIA")]
    assert line == (
        "| NVIDIA H200 | 2026-11-27 | c2 | llama-8b | fixed 500×512/256 | 2, custom | 16,000 | 9,500 | 1.68× "
        "| 2.75 | 4.40 | 1.60× |"
    )
    assert (
        "No rows yet." in text[text.index("## Offline throughput") : text.index("## Serving")]
    )  # no peer ran


def test_offline_answer_names_the_peer_beside_pagoda():
    vllm = {"engine": "vllm 0.26.0", "out_tok_s": 26072.4, "decode_step_ms": {"1": 2.4462}, "startup_s": 62.2}
    rows = [throughput_row("c3", 1, 46756.0, 1.3148, peer={"vllm": vllm})]
    text = results.performance_markdown(rows)
    assert (
        "| NVIDIA H200 | 2026-11-27 | c3 | llama-8b | fixed 500×512/256 | 46,756 | vllm 0.26.0 | 26,072 "
        "| 1.79× | 1.31 | 2.45 |"
    ) in text
    assert "| NVIDIA H200 | 2026-11-27 | c3 | llama-8b | 1 | 5.0 | vllm 0.26.0 | 62.2 |" in text  # start-up


def test_since_prints_only_the_new_rows(tmp_path, capsys):
    path = tmp_path / "results.jsonl"
    for row in (host_row("before", "2026-11-27", 900.0), host_row("after", "2026-11-27", 800.0)):
        record_result(row, tmp_path)
    assert results.main(["--results", str(path), "--since", "1"]) == 0
    out = capsys.readouterr().out
    assert "| after |" in out and "| before |" not in out
