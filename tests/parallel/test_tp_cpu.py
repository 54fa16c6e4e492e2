"""Tensor parallelism on CPU: two worker processes over gloo give TP=1's tokens, and fail cleanly.

The engines run chunked prefill, prefix-cache hits and preemption (a small KV cache and token budget), so
the step messages carry every kind of change; TP=1 and TP=2 schedule identically, so their tokens must be
equal, and their logprobs equal up to float32 rounding (the all-reduce sums in another order).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from engine_service import LLM, SamplingParams
from engine_service.distributed.group import NCCL_DEFAULTS, worker_env
from engine_service.executor.multiproc import WorkerError

TIGHT = dict(
    device="cpu", dtype="float32", block_size=8, num_kv_blocks=20, max_num_batched_tokens=32, max_num_seqs=6
)


def prompts(seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    ps = [[rng.randrange(3, 251) for _ in range(n)] for n in (1, 6, 19, 45, 70)]
    return ps + [ps[4][:40] + [7, 8, 9]]  # shares five full blocks with the prompt before it


GREEDY = SamplingParams(max_tokens=14, temperature=0.0, ignore_eos=True, logprobs=3)


def samples(outs) -> list[list[list[int]]]:
    return [[c.token_ids for c in o.outputs] for o in outs]


@pytest.fixture(scope="module")
def engines(tp_models):
    """(TP=1, TP=2) LLMs per model, built once for the module; the TP=2 workers stop at the end."""
    built: dict[str, tuple[LLM, LLM]] = {}

    def get(name: str) -> tuple[LLM, LLM]:
        if name not in built:
            folder = str(tp_models[name])
            built[name] = (LLM(folder, **TIGHT), LLM(folder, tensor_parallel_size=2, **TIGHT))
        return built[name]

    yield get
    for _, tp2 in built.values():
        tp2.engine.shutdown()


def assert_every_finished_sequence_forgotten(llm: LLM) -> None:
    """Every rank keeps only the sequences that finished since the last step (the next one reports them)."""
    pending = len(llm.engine.scheduler._finished_ids)
    assert llm.engine.executor.num_sequences() == [pending] * 2


@pytest.mark.parametrize("name", ["llama", "qwen2", "kv1", "moe", "gemma2", "phi3"])
def test_greedy_tokens_equal_and_logprobs_close(engines, name):
    tp1, tp2 = engines(name)
    a = tp1.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)
    b = tp2.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)
    assert [o.outputs[0].token_ids for o in b] == [o.outputs[0].token_ids for o in a]
    for x, y in zip(a, b, strict=True):
        for lx, ly in zip(x.outputs[0].logprobs, y.outputs[0].logprobs, strict=True):
            assert [t for t, _ in ly.top] == [t for t, _ in lx.top]
            assert max(abs(vx - vy) for (_, vx), (_, vy) in zip(lx.top, ly.top, strict=True)) < 1e-4
    scheduler = tp2.engine.scheduler
    assert scheduler.num_preemptions > 0 and tp2.engine.block_manager.num_hit_tokens > 0
    assert_every_finished_sequence_forgotten(tp2)


def test_seeded_sampling_with_penalties_equal(engines):
    """Rank 0 samples from its mirror of each sequence: penalties and min_tokens see the same tokens."""
    tp1, tp2 = engines("qwen2")
    params = SamplingParams(
        n=2,
        max_tokens=20,
        temperature=0.9,
        top_k=40,
        top_p=0.95,
        min_p=0.01,
        presence_penalty=0.4,
        frequency_penalty=0.3,
        repetition_penalty=1.3,
        logit_bias={17: 1.5},
        seed=5,
        min_tokens=3,
        stop_token_ids=[44],
        logprobs=1,
    )
    a = tp1.generate(prompt_token_ids=prompts(1), sampling_params=params)
    b = tp2.generate(prompt_token_ids=prompts(1), sampling_params=params)
    assert samples(b) == samples(a)
    assert len({tuple(c.token_ids) for o in b for c in o.outputs}) > 6  # really sampled


def test_async_scheduling_feeds_placeholders_on_every_rank(tp_models, tmp_path):
    """Step n+1 is launched before step n's tokens reach the host: every rank fills the placeholders from
    the tokens it sampled itself, and rank 0 answers each step in order."""
    folder = str(tp_models["kv1"])
    sync = LLM(folder, **TIGHT)
    tp = LLM(folder, tensor_parallel_size=2, async_scheduling=True, **TIGHT)
    try:
        assert tp.engine.async_scheduling
        sampled = SamplingParams(n=2, max_tokens=16, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
        for params in (GREEDY, sampled):
            a = sync.generate(prompt_token_ids=prompts(4), sampling_params=params)
            b = tp.generate(prompt_token_ids=prompts(4), sampling_params=params)
            assert samples(b) == samples(a)
        tp.engine.check_alive()
        # A profile reaches every rank through the worker calls; each writes its own trace.
        trace_dir = tmp_path / "trace"
        tp.start_profile(str(trace_dir))
        tp.generate(prompt_token_ids=prompts(2), sampling_params=GREEDY)
        paths = tp.stop_profile()
        assert paths == [str(trace_dir / "rank0.json"), str(trace_dir / "rank1.json")]
        for path in paths:
            events = json.loads(Path(path).read_text())["traceEvents"]
            assert any(e.get("cat") == "cpu_op" and e["name"].startswith("aten::") for e in events)
        with pytest.raises(RuntimeError, match="no profile is running"):
            tp.stop_profile()  # refused by the driver: the ranks never see it
        tp.engine.check_alive()
    finally:
        tp.engine.shutdown()


def test_abort_mid_generation_then_continue(engines):
    tp1, tp2 = engines("kv1")
    for llm in (tp1, tp2):
        engine = llm.engine
        engine.add_request("gone", prompts(2)[3], SamplingParams(max_tokens=50, temperature=0.0))
        engine.add_request("kept", prompts(2)[2], SamplingParams(max_tokens=5, temperature=0.0))
        for _ in range(4):
            engine.step()
        assert engine.abort("gone")
        while engine.has_unfinished():
            engine.step()
    assert_every_finished_sequence_forgotten(tp2)
    a = tp1.generate(prompt_token_ids=prompts(3), sampling_params=GREEDY)
    b = tp2.generate(prompt_token_ids=prompts(3), sampling_params=GREEDY)
    assert [o.outputs[0].token_ids for o in b] == [o.outputs[0].token_ids for o in a]


def test_a_killed_worker_fails_the_next_step_quickly(tp_models):
    llm = LLM(str(tp_models["llama"]), tensor_parallel_size=2, **TIGHT)
    workers = llm.engine.executor.workers
    try:
        os.kill(workers[1].proc.pid, signal.SIGKILL)
        workers[1].proc.wait(10)
        started = time.monotonic()
        with pytest.raises(WorkerError, match=r"tensor-parallel worker 1 \(pid \d+, exit status -9\) died"):
            llm.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)
        assert time.monotonic() - started < 5
        assert all(w.proc.poll() is not None for w in workers)  # rank 0, maybe mid-collective, was killed
        with pytest.raises(WorkerError):  # and it stays failed
            llm.engine.check_alive()
    finally:
        llm.engine.shutdown()


def test_a_worker_dying_while_idle_is_seen_by_check_alive(tp_models):
    llm = LLM(str(tp_models["llama"]), tensor_parallel_size=2, **TIGHT)
    try:
        llm.engine.check_alive()
        os.kill(llm.engine.executor.workers[0].proc.pid, signal.SIGKILL)
        llm.engine.executor.workers[0].proc.wait(5)
        with pytest.raises(WorkerError, match="worker 0"):
            llm.engine.check_alive()
    finally:
        llm.engine.shutdown()
    assert all(w.proc.poll() is not None for w in llm.engine.executor.workers)


def test_shutdown_stops_workers_cleanly_and_workers_keep_nvlink_multicast_off(tp_models, monkeypatch):
    for name in NCCL_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    llm = LLM(str(tp_models["qwen2"]), tensor_parallel_size=2, **TIGHT)
    workers = llm.engine.executor.workers
    for w in workers:  # what the device machines require (KINDS.md), also where nobody set it
        environ = Path(f"/proc/{w.proc.pid}/environ").read_bytes().split(b"\0")
        env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
        assert {name: env.get(name) for name in NCCL_DEFAULTS} == {
            "NCCL_NVLS_ENABLE": "0",
            "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
            "NVSHMEM_DISABLE_NVLS": "1",
        }
    llm.engine.shutdown()
    assert [w.proc.returncode for w in workers] == [0, 0]  # left the process group and exited
    llm.engine.shutdown()  # idempotent
    with pytest.raises(WorkerError, match="shut down"):
        llm.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)


@pytest.mark.parametrize(
    "kw,words",
    [
        (dict(tensor_parallel_size=3), "must divide the model's num_attention_heads"),
        (dict(tensor_parallel_size=2, device="cuda"), ""),
    ],
)
def test_impossible_tensor_parallel_sizes_are_clear_errors(tp_models, kw, words):
    import torch

    if kw.get("device") == "cuda":
        if torch.cuda.device_count() >= 2:
            pytest.skip("this machine has the GPUs")
        words = "needs 2 GPUs" if torch.cuda.is_available() else "sees no CUDA GPU"
    with pytest.raises(ValueError, match=words):
        LLM(str(tp_models["llama"]), **{**TIGHT, **kw})


def test_an_explicit_nccl_setting_in_the_engine_environment_wins():
    env = worker_env({"NCCL_NVLS_ENABLE": "1", "OMP_NUM_THREADS": "3"}, num_threads=1)
    assert env["NCCL_NVLS_ENABLE"] == "1" and env["NVSHMEM_DISABLE_NVLS"] == "1"
    assert env["OMP_NUM_THREADS"] == "3"


def test_prompt_logprobs_under_tensor_parallelism(engines):
    """Every rank scores the prompt chunks from its own persistent batch (the step message carries no
    Sequence): TP=2 gives TP=1's prompt logprobs through chunked prefill and preemption."""
    tp1, tp2 = engines("llama")
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, prompt_logprobs=2)
    a = tp1.generate(prompt_token_ids=prompts(1), sampling_params=params)
    b = tp2.generate(prompt_token_ids=prompts(1), sampling_params=params)
    assert samples(b) == samples(a)
    for x, y in zip(a, b, strict=True):
        assert len(y.prompt_logprobs) == len(x.prompt_logprobs) == len(x.prompt_token_ids) - 1
        for lx, ly in zip(x.prompt_logprobs, y.prompt_logprobs, strict=True):
            assert [t for t, _ in ly.top] == [t for t, _ in lx.top]
            assert max(abs(vx - vy) for (_, vx), (_, vy) in zip(lx.top, ly.top, strict=True)) < 1e-4
    assert_every_finished_sequence_forgotten(tp2)
