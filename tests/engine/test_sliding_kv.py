"""Gemma 2/3's sliding-window layers keep only their window's KV blocks (core/kv_cache_groups.py), and greedy
tokens and logprobs still equal transformers': prompts and generations run several blocks past the window
(8 keys, blocks of 4) through chunked prefill, prefix hits longer than the window and preemption. The
sliding group's blocks in use stay bounded while the global group's grow; the KV capacity the engine
reports shows the saving; the decode-graph buffers carry the sliding group's table."""

from __future__ import annotations

import logging

import pytest
from arch_models import WINDOW, make_arch_model
from test_decode_graph_inputs import EagerGraphs
from test_parity_hf import check, hf_greedy, prompts_of

from engine_service import LLM, SamplingParams

BLOCK = 4
WINDOW_BLOCKS = -(-WINDOW // BLOCK)


@pytest.fixture(scope="module")
def gemma_models(tmp_path_factory):
    built = {}

    def get(arch: str):
        if arch not in built:
            folder = tmp_path_factory.mktemp(f"sliding-{arch}")
            built[arch] = (folder, make_arch_model(folder, arch))
        return built[arch]

    return get


class SlidingWatch:
    """Wraps the engine's scheduler (the real one): after each schedule, every running sequence's sliding
    table has null entries exactly before its window and holds a bounded number of blocks."""

    def __init__(self, llm: LLM, chunk: int):
        self.bm = llm.engine.block_manager
        self.sched = llm.engine.scheduler
        self.bound = WINDOW_BLOCKS + 2 + -(-chunk // BLOCK)
        self.max_sliding = self.max_full = self.num_nulls = 0
        schedule = self.sched.schedule

        def watched():
            out = schedule()
            self.check(out)
            return out

        self.sched.schedule = watched

    def check(self, out) -> None:
        sliding = self.bm.sliding
        for seq_id, start in zip(out.seq_ids, out.num_computed_tokens, strict=True):
            table = sliding.block_table(seq_id)
            num_null = sum(1 for b in table if b == sliding.null_block)
            assert table[:num_null] == [sliding.null_block] * num_null
            assert num_null <= sliding.first_visible(start)  # nothing the step's queries see is null
            self.num_nulls = max(self.num_nulls, num_null)
            held = sliding.num_blocks_held(seq_id)
            assert held <= self.bound, (seq_id, start, table)
            self.max_sliding = max(self.max_sliding, held)
        for seq in self.sched.running:
            self.max_full = max(self.max_full, len(self.bm.block_table(seq)))


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_chunked_prefill_prefix_hits_and_preemption_past_the_window(gemma_models, arch):
    folder, model = gemma_models(arch)
    llm = LLM(
        str(folder),
        device="cpu",
        dtype="float32",
        num_kv_blocks=14,
        block_size=BLOCK,
        max_num_batched_tokens=9,
        max_model_len=64,
        max_num_seqs=2,
    )
    bm = llm.engine.block_manager
    assert bm.sliding is not None and bm.sliding.window == WINDOW
    assert bm.sliding.num_blocks == 3 + 2 * (WINDOW_BLOCKS + 2)  # its demand: below the global group's 14
    watch = SlidingWatch(llm, chunk=9)
    shared = prompts_of([22], seed=11)[0]  # a prefix of 5 full blocks, longer than the window
    check(llm, model, [shared + [5, 6], shared + [7]] + prompts_of([13, 30, 9], seed=3))
    assert llm.engine.scheduler.num_preemptions > 0
    assert bm.num_hit_tokens > WINDOW  # a hit past the window
    assert watch.num_nulls >= 3 and watch.max_full > watch.max_sliding
    bm.check_all_free()


@pytest.mark.parametrize("caching", [True, False])
def test_prefix_hits_longer_than_the_window_with_a_roomy_cache(gemma_models, caching):
    folder, model = gemma_models("gemma3")
    llm = LLM(
        str(folder),
        device="cpu",
        dtype="float32",
        num_kv_blocks=64,
        block_size=BLOCK,
        enable_prefix_caching=caching,
        max_num_batched_tokens=16,
    )
    shared = prompts_of([29], seed=5)[0]
    check(llm, model, [shared + [9]])
    check(llm, model, [shared + [4, 8], shared[:18] + [3]])  # hits of 28 and 16 tokens
    bm = llm.engine.block_manager
    assert bm.num_hit_tokens == (28 + 16 if caching else 0)


def test_sliding_blocks_stay_bounded_while_the_global_blocks_grow(gemma_models):
    folder, model = gemma_models("gemma3")
    llm = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=64, block_size=BLOCK)
    prompt = prompts_of([10], seed=2)[0]
    params = SamplingParams(max_tokens=70, temperature=0.0, ignore_eos=True, logprobs=1)
    engine, bm = llm.engine, llm.engine.block_manager
    engine.add_request("long", prompt, params)
    held = []  # (global blocks, sliding blocks) of the sequence after each step
    while engine.has_unfinished():
        engine.step()
        for seq in engine.scheduler.running:
            held.append((len(bm.block_table(seq)), bm.sliding.num_blocks_held(seq.seq_id)))
    full, sliding = zip(*held, strict=True)
    assert full[-1] == -(-79 // BLOCK)  # 10 + 70 tokens, the last one never fed: 79 in the cache
    assert max(sliding) <= WINDOW_BLOCKS + 1  # decode: the window's blocks and one partial end
    assert sliding[-1] <= WINDOW_BLOCKS + 1 and full[-1] >= 6 * sliding[-1]
    assert (bm.num_free_blocks, bm.sliding.num_free_blocks) == (64, bm.sliding.num_blocks)
    ref_tokens, ref_logprobs = hf_greedy(model, prompt, max_tokens=70)
    llm2 = LLM(str(folder), device="cpu", dtype="float32", num_kv_blocks=64, block_size=BLOCK)
    got = llm2.generate(prompt_token_ids=[prompt], sampling_params=params)[0].outputs[0]
    assert got.token_ids == ref_tokens
    assert max(abs(lp.logprob - r) for lp, r in zip(got.logprobs, ref_logprobs, strict=True)) < 1e-4


def test_kv_capacity_counts_only_the_window_on_sliding_layers(gemma_models, caplog):
    folder, _ = gemma_models("gemma3")  # 4 layers: 3 sliding, 1 global
    budget = 2**20  # cpu_kv_cache_gib: 1 MiB
    with caplog.at_level(logging.INFO, logger="engine_service.engine.engine"):
        llm = LLM(
            str(folder),
            device="cpu",
            dtype="float32",
            block_size=16,
            cpu_kv_cache_gib=budget / 2**30,
            max_num_seqs=4,
            max_num_batched_tokens=256,
        )
    engine = llm.engine
    per_layer = engine.executor.kv_bytes_per_block // 4  # one layer's K and V for 16 tokens: 4 KiB
    assert per_layer == 2 * 16 * 2 * 16 * 4
    before = budget // (4 * per_layer)  # one pool of all-layer blocks: 64
    after = engine.model_info.num_kv_blocks
    num_sliding = engine.block_manager.sliding.num_blocks
    assert num_sliding == 256 // 16 + 4 * (1 + 2)  # the step's chunks and 4 sequences' windows
    assert after == before * 4 - 3 - 3 * num_sliding  # every other single-layer block (3: null blocks)
    assert (before, after, num_sliding) == (64, 169, 28)  # 2.6x the context in the same memory
    assert per_layer * (after + 3 * (num_sliding + 1)) <= budget
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert (
        f"1 global layers, {after} blocks; 3 sliding layers (window {WINDOW}), {num_sliding} blocks" in logged
    )
    assert f"{after} blocks of 16 tokens" in logged


def test_decode_graph_buffers_carry_the_sliding_table(gemma_models):
    folder, _ = gemma_models("gemma2")
    prompts = prompts_of([3, 17, 26, 5], seed=9)
    params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in (20, 6, 13, 16)]
    kw = dict(device="cpu", dtype="float32", num_kv_blocks=64, block_size=BLOCK, max_num_seqs=8)
    eager = LLM(str(folder), **kw)
    expected = [
        o.outputs[0].token_ids for o in eager.generate(prompt_token_ids=prompts, sampling_params=params)
    ]

    llm = LLM(str(folder), **kw)
    runner = llm.engine.runner
    runner.graphs = EagerGraphs(
        runner.model, runner.kv_caches, 8, llm.engine.max_model_len, BLOCK, runner.device, sliding=True
    )
    runner.graphs.capture()
    calls = []
    original = runner.graphs.run
    runner.graphs.run = lambda *a: calls.append(len(a[0])) or original(*a)
    got = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    assert got == expected
    assert {4, 3, 2, 1} <= set(calls)


def test_async_scheduling_past_the_window(gemma_models):
    """Step n + 1 is scheduled (and its out-of-window blocks released) before step n's tokens arrive."""
    folder, model = gemma_models("gemma3")
    llm = LLM(
        str(folder),
        device="cpu",
        dtype="float32",
        num_kv_blocks=32,
        block_size=BLOCK,
        max_num_batched_tokens=12,
        async_scheduling=True,
    )
    assert llm.engine.async_scheduling
    watch = SlidingWatch(llm, chunk=12)
    check(llm, model, prompts_of([5, 27, 14], seed=8))
    assert watch.num_nulls >= 5
