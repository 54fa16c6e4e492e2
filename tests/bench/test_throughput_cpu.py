"""`pagoda bench throughput` end to end on CPU: the tiny shape, a tiny workload, the real engine and the real
peer launcher. The GPU figures themselves come from benchmarks/gpu_session.sh."""

from __future__ import annotations

import json
import logging

import pytest

from benchmarks import results
from pagoda.bench import peers, roofline, throughput
from pagoda.bench.workloads import build

TINY = ["--shape", "tiny", "--device", "cpu", "--dtype", "float32", "--commit", "test"]


def run(tmp_path, *args) -> dict:
    argv = [*TINY, "--model-dir", str(tmp_path / "model"), "--results-dir", str(tmp_path / "results"), *args]
    code = throughput.main(argv)
    lines = (tmp_path / "results" / "results.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])
    assert code == (1 if "error" in record["pagoda"] else 0)
    return record


def results_md_row(tmp_path) -> str:
    """The last row's line in the offline table that `python -m benchmarks.results` builds."""
    rows = results.read_rows(tmp_path / "results" / "results.jsonl")
    table = results.results_markdown(rows).split("## Offline throughput")[1]
    return next(line for line in table.splitlines() if line.startswith("| ") and "| tiny |" in line)


def test_fixed_workload_end_to_end(tmp_path):
    out_json = tmp_path / "one.json"
    record = run(
        tmp_path,
        "--num-prompts",
        "6",
        "--input-len",
        "16",
        "--output-len",
        "8",
        "--decode-batch-sizes",
        "1,2",
        "--decode-tokens",
        "2,6",
        "--out-json",
        str(out_json),
    )
    pagoda = record["pagoda"]
    assert "error" not in pagoda, pagoda
    assert (pagoda["num_prompts"], pagoda["num_prompt_tokens"], pagoda["num_output_tokens"]) == (6, 96, 48)
    assert record["out_tok_s"] == pagoda["out_tok_s"] > 0 and record["total_tok_s"] == pytest.approx(
        3 * record["out_tok_s"], rel=0.01
    )
    assert (
        set(pagoda["decode_step_ms"]) == {"1", "2"} and record["itl_bs1_ms"] == pagoda["decode_step_ms"]["1"]
    )
    assert pagoda["ttft_ms"]["p50"] > 0 and pagoda["tpot_ms"]["p50"] > 0 and pagoda["startup_s"] > 0
    # no ceilings on CPU: no roofline, no efficiency
    assert record["roofline"] is None and record["efficiency"] is None and record["itl_bs1_floor_ms"] is None
    assert (record["card"], record["commit"], record["shape"], record["peer"]) == ("cpu", "test", "tiny", {})
    assert json.loads(out_json.read_text()) == record
    assert record["kind"] == "throughput"
    row = results_md_row(tmp_path)
    assert row.startswith("| ") and "| tiny | fixed 6×16/8 |" in row


def test_shared_prefix_hits_the_cache_only_when_on(tmp_path):
    # one sequence at a time, so that every request after the first finds the prefix already computed
    args = [
        "--workload",
        "shared-prefix",
        "--num-prompts",
        "4",
        "--prefix-len",
        "32",
        "--input-len",
        "8",
        "--output-len",
        "2",
        "--max-num-seqs",
        "1",
        "--decode-batch-sizes",
        "",
    ]
    on = run(tmp_path, *args)
    off = run(tmp_path, *args, "--no-prefix-caching")
    assert on["prefix_caching"] and not off["prefix_caching"]
    assert on["pagoda"]["num_cached_tokens"] == 3 * 32
    assert off["pagoda"]["num_cached_tokens"] == 0
    assert on["workload"]["prefix_len"] == 32 and on["itl_bs1_ms"] is None


def test_roofline_fields_with_given_ceilings():
    config = throughput.build_config(
        throughput.parse_args(
            [
                *TINY,
                "--workload",
                "shared-prefix",
                "--num-prompts",
                "3",
                "--prefix-len",
                "32",
                "--input-len",
                "8",
                "--output-len",
                "4",
            ]
        )
    )
    dims = roofline.ModelDims.from_config(throughput.shapes.shape_config("tiny"))
    requests = build(config.workload, 512)
    assert [w.cached_len for w in throughput.request_work(config, requests)] == [0, 32, 32]
    card = roofline.Ceilings(1e9, 1e8)
    summary = throughput.roofline_summary(config, dims, requests, card)
    work = roofline.count_work(dims, throughput.request_work(config, requests), 256, 8192)
    assert summary["floor_s"] == pytest.approx(roofline.time_floor(work, card).seconds, abs=1e-4)
    assert summary["num_steps"] == 4
    result = {
        "num_prompts": 2,
        "elapsed_s": 2 * summary["floor_s"],
        "max_num_seqs": None,
        "max_num_batched_tokens": None,
    }
    throughput.attach_efficiency(result, config, dims, requests, card)  # on its 2 prompts only
    assert 0.3 < result["efficiency"] < 0.5
    floors = throughput.decode_floors_ms(config, dims, card)
    assert set(floors) == {"1", "256"} and floors["256"] > floors["1"] > 0


def test_a_failing_peer_is_recorded_not_raised(tmp_path):
    record = run(
        tmp_path,
        "--num-prompts",
        "2",
        "--input-len",
        "8",
        "--output-len",
        "2",
        "--decode-batch-sizes",
        "",
        "--peer",
        "vllm",
        "--vllm-site",
        str(tmp_path / "nowhere"),
    )
    assert "vLLM is not in" in record["peer"]["vllm"]["error"]
    assert "error" not in record["pagoda"]
    assert "| error |" in results_md_row(tmp_path)


def test_peer_worker_failure_keeps_the_log_tail(tmp_path):
    config = throughput.build_config(throughput.parse_args([*TINY, "--num-prompts", "2"]))
    job = peers.PeerJob(
        model_dir=str(tmp_path),
        device="cpu",
        workload=config.workload.to_dict(),
        vocab_size=512,
        prefix_caching=True,
        dtype="float32",
        temperature=1.0,
        max_model_len=64,
        gpu_memory_utilization=0.9,
        max_num_seqs=None,
        max_num_batched_tokens=None,
        decode_batch_sizes=(),
        decode_tokens=(2, 4),
        num_prompts=2,
        batch_size=2,
        mode="bogus",
    )
    result = peers.run_worker("pagoda.bench.peer_hf", job, throughput.peer_env("hf", config), timeout_s=60)
    assert result["error"] == "exit status 1"
    assert "mode must be static or cb" in result["log_tail"]


def test_hf_static_peer_on_cpu(tmp_path):
    """The transformers peer through the real launcher (static generate; CB mode runs on the GPU machine)."""
    config = throughput.build_config(
        throughput.parse_args(
            [
                *TINY,
                "--model-dir",
                str(tmp_path / "m"),
                "--num-prompts",
                "5",
                "--input-len",
                "8",
                "--output-len",
                "4",
                "--hf-batch-size",
                "2",
                "--decode-batch-sizes",
                "1",
                "--decode-tokens",
                "2,4",
            ]
        )
    )
    throughput.shapes.write_model_dir("tiny", config.model_dir)
    job = peers.PeerJob(
        model_dir=config.model_dir,
        device="cpu",
        workload=config.workload.to_dict(),
        vocab_size=512,
        prefix_caching=True,
        dtype="float32",
        temperature=1.0,
        max_model_len=config.max_model_len,
        gpu_memory_utilization=0.9,
        max_num_seqs=None,
        max_num_batched_tokens=None,
        decode_batch_sizes=(1,),
        decode_tokens=(2, 4),
        num_prompts=5,
        batch_size=2,
        mode="static",
    )
    result = peers.run_worker("pagoda.bench.peer_hf", job, throughput.peer_env("hf", config), timeout_s=120)
    assert "error" not in result, result
    assert result["engine"].startswith("transformers ") and result["engine"].endswith("(generate)")
    assert (result["num_prompts"], result["num_output_tokens"], result["generated_tokens"]) == (5, 20, 20)
    assert result["max_num_seqs"] == 2 and set(result["decode_step_ms"]) == {"1"}


def test_a_hung_peer_is_killed_with_everything_it_started(tmp_path):
    import time

    config = throughput.build_config(throughput.parse_args([*TINY, "--num-prompts", "2"]))
    job = peers.PeerJob(
        model_dir=str(tmp_path),
        device="cpu",
        workload=config.workload.to_dict(),
        vocab_size=512,
        prefix_caching=True,
        dtype="float32",
        temperature=1.0,
        max_model_len=64,
        gpu_memory_utilization=0.9,
        max_num_seqs=None,
        max_num_batched_tokens=None,
        decode_batch_sizes=(),
        decode_tokens=(2, 4),
        num_prompts=2,
        batch_size=2,
    )
    pid_file = tmp_path / "grandchild.pid"
    started = time.monotonic()
    result = peers.run_worker(
        "tests.bench.fake_peer",
        job,
        throughput.peer_env("hf", config),
        timeout_s=2,
        extra_args=[str(pid_file)],
    )
    assert result["error"] == "timed out after 2 s" and time.monotonic() - started < 10
    pid = int(pid_file.read_text())
    for _ in range(50):  # SIGKILL is asynchronous; a killed, reparented process may linger as a zombie
        if not _running(pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the peer's grandchild {pid} outlived it")


def _running(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_fp8_settings_reach_the_engine_and_the_row(tmp_path, caplog):
    """--quantization fp8 and --kv-cache-dtype fp8 build Pagoda's engine with them (FP8 weights and KV cache,
    dequantized on CPU) and are recorded with the row, so FP8 rows are told apart from 16-bit ones."""
    caplog.set_level(logging.INFO)
    record = run(
        tmp_path,
        "--num-prompts",
        "2",
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--decode-batch-sizes",
        "1",
        "--decode-tokens",
        "2,4",
        "--quantization",
        "fp8",
        "--kv-cache-dtype",
        "fp8",
    )
    assert "error" not in record["pagoda"], record["pagoda"]
    assert record["pagoda"]["num_output_tokens"] == 8
    assert (record["settings"]["quantization"], record["settings"]["kv_cache_dtype"]) == ("fp8", "fp8")
    # the engine's start-up lines: it was built with FP8 weights and an FP8 cache
    assert "linear layers in FP8 e4m3 (online)" in caplog.text and "KV cache (fp8 e4m3" in caplog.text
