"""benchmarks/timeline.py on hand-made traces: steps cut at the marker, busy time as the union of device
ops, and idle gaps split by whether the host launched the next op only after the device ran dry."""

import json

import pytest
import torch

from benchmarks import timeline


def op(name, ts, dur, corr, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}


def call(name, ts, corr):
    return op(name, ts, 2.0, corr, cat="cuda_runtime")


def two_steps():
    """Marker ends at 10, 110, 210. Step 1: a graph (launched early) of two kernels with a 3 µs gap between
    them, then the LM head launched 20 µs after the graph ended (host-bound). Step 2: all queued in time."""
    return [
        op("_sample_kernel", 0, 10, 1),
        call("cudaGraphLaunch", 5, 2),
        op("gemv", 12, 40, 2),
        op("norm", 55, 5, 2),  # 3 µs after gemv: launched long before (inside the graph)
        call("cudaLaunchKernel", 80, 3),  # the graph ended at 60: launched 20 µs late
        op("lm_head", 85, 20, 3),
        call("cuLaunchKernelEx", 90, 4),
        op("_sample_kernel", 105, 5, 4),  # ends at 110
        call("cudaMemcpyAsync", 100, 5),
        op("Memcpy HtoD", 111, 2, 5, cat="gpu_memcpy"),
        call("cudaGraphLaunch", 101, 6),
        op("gemv", 113, 90, 6),
        op("_sample_kernel", 203, 7, 7),  # ends at 210
        call("cuLaunchKernelEx", 150, 7),
    ]


def test_steps_busy_and_gaps():
    steps = timeline.device_steps(two_steps(), "_sample_kernel")
    assert [s.wall_us for s in steps] == [100, 100]
    first, second = steps
    assert first.busy_us == 40 + 5 + 20 + 5
    gaps = [(g.before, g.after, g.us, g.host_bound, g.launch) for g in first.gaps]
    assert gaps == [
        ("_sample_kernel", "gemv", 2, False, "cudaGraphLaunch"),
        ("gemv", "norm", 3, False, "cudaGraphLaunch"),
        ("norm", "lm_head", 25, True, "cudaLaunchKernel"),
    ]
    assert first.gaps[-1].host_late_us == 20
    assert first.host_idle_us == 25 and first.device_idle_us == 5
    assert second.busy_us == 2 + 90 + 7 and second.gaps == []  # 1 µs gaps are below the threshold


def test_summary_groups_gaps_and_takes_medians():
    summary = timeline.summarize(timeline.device_steps(two_steps(), "_sample_kernel"))
    assert summary["steps"] == 2 and summary["wall_us"] == 100
    assert summary["host_idle_us"] == 12.5  # the median of 25 and 0
    worst = summary["gaps"][0]
    assert (worst["before"], worst["after"], worst["host_bound"]) == ("norm", "lm_head", True)
    assert worst["per_step"] == 0.5 and worst["mean_us"] == 25
    assert timeline.summarize([]) == {"steps": 0}


def test_marker_ends_are_in_time_order():
    events = list(reversed(two_steps()))  # traces list events in no particular order
    assert timeline.marker_ends(events, "_sample_kernel") == [10, 110, 210]
    assert [s.wall_us for s in timeline.device_steps(events, "_sample_kernel")] == [100, 100]


def test_device_ops_outside_graphs():
    ops = timeline.device_time_by_op(two_steps(), 10, 210, outside_graphs=True)
    assert ops == [("lm_head", 1, 20), ("_sample_kernel", 2, 12), ("Memcpy HtoD", 1, 2)]
    every = timeline.device_time_by_op(two_steps(), 10, 210)
    assert every[0] == ("gemv", 2, 130)


def test_dummy_llm_and_a_cpu_profile(tmp_path):
    """The engine the GPU probes build (shapes.dummy_llm), here the tiny shape on CPU, profiled the way
    decode_timeline.py does it: the trace holds the host's ops (no kernels on a CPU to cut steps at)."""
    from engine_service import SamplingParams
    from pagoda.bench.shapes import dummy_llm

    llm = dummy_llm("tiny", dtype="float32", device="cpu", num_kv_blocks=64, max_num_seqs=4)
    assert llm.engine.model_config.vocab_size == 512
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    llm.start_profile(str(tmp_path))
    out = llm.generate(prompt_token_ids=[[5, 6, 7], [8, 9]], sampling_params=params)
    (path,) = llm.stop_profile()
    assert [len(o.outputs[0].token_ids) for o in out] == [3, 3]
    events = json.loads(open(path).read())["traceEvents"]
    assert any(e.get("cat") == "cpu_op" for e in events)
    assert timeline.device_steps(events, "_sample_kernel") == []


def test_critical_path_charges_add_up_to_the_span():
    """Overlapping ops (as under PDL) are charged only the time by which each moved the end of the work on,
    gaps included, so the charges sum to the span; an op that ends inside earlier work is charged 0."""
    events = [
        op("gemv", 0, 10, 1),  # ends at 10
        op("norm", 8, 4, 2),  # launched early, ends at 12: charged 2
        op("tiny", 9, 2, 3),  # ends at 11, inside the norm's end: 0
        op("gemv", 11, 9, 4),  # ends at 20: 8
        op("Memcpy", 25, 5, 5, cat="gpu_memcpy"),  # ends at 30, after a 5 µs gap: 10
        op("late", 30, 50, 6),  # ends past the span: left out
    ]
    got = timeline.critical_path_by_op(events, 0, 30)
    assert got == [("gemv", 2, 18.0), ("Memcpy", 1, 10.0), ("norm", 1, 2.0), ("tiny", 1, 0.0)]
    assert sum(us for _, _, us in got) == 30


def test_ops_sum_by_kernel_family():
    ops = [
        ("_gemv_kernel", 128, 3500.0),
        ("nvjet_sm90_tst_256x8", 1, 240.0),
        ("_paged_attention_kernel", 32, 210.0),
        ("_reduce_splits_kernel", 32, 40.0),
        ("_all_reduce_add_rms_norm_kernel", 65, 300.0),
        ("_rms_norm_kernel", 1, 2.0),
        ("Memcpy HtoD (Pinned -> Device)", 1, 3.0),
        ("mystery", 1, 1.0),
    ]
    families = timeline.by_family(ops)
    assert list(families) == ["matrix products", "all-reduce+norm", "attention", "copies", "norms", "other"]
    assert families["matrix products"] == {"us": 3740.0, "launches": 129}
    assert families["attention"] == {"us": 250.0, "launches": 64}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_profile_of_decode_steps_shows_the_graph_kernels(tmp_path):
    """What benchmarks/decode_timeline.py reads: LLM.start_profile around real decode steps (replayed from
    CUDA graphs) gives steps cut at the sampler's kernel, and the kernels inside the graphs."""
    from engine_service import SamplingParams
    from pagoda.bench.shapes import dummy_llm

    llm = dummy_llm("tiny", num_kv_blocks=128, max_num_seqs=8)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    prompts = [[5 + i, 6, 7, 8] for i in range(3)]
    llm.generate(prompt_token_ids=prompts, sampling_params=params)  # warm: every kernel compiled
    llm.start_profile(str(tmp_path))
    llm.generate(prompt_token_ids=prompts, sampling_params=params)
    (path,) = llm.stop_profile()
    llm.engine.shutdown()
    events = json.loads(open(path).read())["traceEvents"]
    steps = timeline.device_steps(events, "_sample_kernel")
    assert len(steps) >= 20 and all(s.busy_us > 0 for s in steps)
    ends = timeline.marker_ends(events, "_sample_kernel")
    families = timeline.by_family(timeline.device_time_by_op(events, ends[2], ends[-1], top=1000))
    assert {"attention", "norms", "matrix products"} <= set(families)
