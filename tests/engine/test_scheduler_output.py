"""What a step's SchedulerOutput says changed, with exact ids: new sequences whole, the others as new blocks,
output tokens, resumed or preempted, finished since the last step, and whether the batch is the same."""

from __future__ import annotations

import pickle

from engine_service.core.block_manager import BlockManager
from engine_service.core.sampling_params import SamplingParams
from engine_service.core.scheduler import Scheduler, SchedulerOutput
from engine_service.core.sequence import PLACEHOLDER, Sequence

EOS = 0


def make(num_blocks=16, block_size=4, max_num_seqs=8, budget=32, max_model_len=64) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), max_num_seqs, budget, max_model_len, [EOS])


def seq(name: str, n_prompt: int, max_tokens: int = 8, start: int = 1) -> Sequence:
    params = SamplingParams(max_tokens=max_tokens)
    return Sequence(f"{name}#0", name, 0, list(range(start, start + n_prompt)), params)


def batch(out: SchedulerOutput) -> list[tuple]:
    return list(zip(out.seq_ids, out.num_computed_tokens, out.num_new_tokens, strict=True))


def changes(out: SchedulerOutput) -> dict:
    return dict(
        new=[(n.seq_id, n.block_ids) for n in out.new_seqs],
        resumed=out.resumed_seq_ids,
        blocks=out.new_block_ids,
        preempted=out.preempted_seq_ids,
        finished=out.finished_seq_ids,
        same=out.same_batch,
    )


def collect(s: Scheduler, out: SchedulerOutput, token: int = 7) -> list[Sequence]:
    sampling = out.sampled_seqs()
    return s.update_from_output(sampling, [token] * len(sampling))


def test_new_sequences_come_whole_then_as_a_diff():
    s = make(budget=10)
    a, b = seq("a", 6), seq("b", 9, start=100)
    s.add(a)
    s.add(b)
    out = s.schedule()  # a's prompt whole; b's first 4 tokens (the budget's rest): b does not sample
    assert batch(out) == [("a#0", 0, 6), ("b#0", 0, 4)] and out.partial == [1]
    assert changes(out) == dict(
        new=[("a#0", [0, 1]), ("b#0", [2])], resumed=[], blocks={}, preempted=[], finished=[], same=False
    )
    assert out.output_token_ids == [] and out.new_seqs[1].prompt_token_ids == b.prompt_token_ids
    assert out.sampled_seqs() == [a]
    collect(s, out)

    out = s.schedule()  # a decodes inside its last block; b's 5 remaining prompt tokens take 2 blocks
    assert batch(out) == [("a#0", 6, 1), ("b#0", 4, 5)] and out.partial == []
    assert changes(out) == dict(
        new=[], resumed=[], blocks={"b#0": [3, 4]}, preempted=[], finished=[], same=False
    )
    assert out.output_token_ids == [7]  # a's input: its first output token (the prompt's the runner holds)
    collect(s, out, token=8)

    out = s.schedule()  # both decode, every running sequence sampled last step too: the same batch
    assert batch(out) == [("a#0", 7, 1), ("b#0", 9, 1)]
    assert changes(out) == dict(new=[], resumed=[], blocks={}, preempted=[], finished=[], same=True)
    assert out.output_token_ids == [8, 8]
    collect(s, out)

    out = s.schedule()  # a's position 8 starts its third block
    assert batch(out) == [("a#0", 8, 1), ("b#0", 10, 1)]
    assert changes(out) == dict(new=[], resumed=[], blocks={"a#0": [5]}, preempted=[], finished=[], same=True)


def test_async_steps_feed_placeholders():
    s = make()
    a, b = seq("a", 3), seq("b", 5, start=20)
    s.add(a)
    s.add(b)
    first = s.schedule()
    second = s.schedule()  # scheduled before the first step's tokens are known
    assert batch(second) == [("a#0", 3, 1), ("b#0", 5, 1)]
    assert second.output_token_ids == [PLACEHOLDER, PLACEHOLDER] and second.same_batch
    collect(s, first)
    collect(s, second)
    assert s.schedule().output_token_ids == [7, 7]  # resolved by then


def test_preempted_then_resumed_with_its_prefix_hit_and_a_new_table():
    s = make(num_blocks=4, block_size=4, budget=64, max_model_len=16)
    a, b = seq("a", 8, max_tokens=2), seq("b", 4, max_tokens=5, start=50)
    s.add(a)
    s.add(b)
    out = s.schedule()
    assert changes(out)["new"] == [("a#0", [0, 1]), ("b#0", [2])]
    collect(s, out)

    out = s.schedule()  # a takes the last free block; b needs one too and is preempted
    assert batch(out) == [("a#0", 8, 1)] and out.preempted == [b]
    assert changes(out) == dict(
        new=[], resumed=[], blocks={"a#0": [3]}, preempted=["b#0"], finished=[], same=False
    )
    assert collect(s, out) == [a]  # a's second token is its last

    out = s.schedule()  # b's full prompt block is still cached: it resumes on it, with one new block
    assert batch(out) == [("b#0", 4, 1)]
    assert changes(out) == dict(
        new=[], resumed=["b#0"], blocks={"b#0": [2, 3]}, preempted=[], finished=["a#0"], same=False
    )
    assert out.output_token_ids == [7]  # its output so far, recomputed from the step's tokens


def test_new_sequence_on_a_prefix_hit_carries_its_whole_table():
    s = make(block_size=4)
    a = seq("a", 12)
    s.add(a)
    collect(s, s.schedule())
    b = seq("b", 12)  # same prompt: two full blocks hit, the last one is recomputed
    s.add(b)
    out = s.schedule()
    assert batch(out) == [("a#0", 12, 1), ("b#0", 8, 4)]  # a, running, takes its new block first
    assert changes(out) == dict(
        new=[("b#0", [0, 1, 4])], resumed=[], blocks={"a#0": [3]}, preempted=[], finished=[], same=False
    )


def test_finished_and_aborted_sequences_are_reported_once_with_the_next_step():
    s = make()
    a, b, c, d = (
        seq("a", 3, max_tokens=1),
        seq("b", 3, start=10),
        seq("c", 3, start=20),
        seq("d", 3, start=30),
    )
    for x in (a, b, c):
        s.add(x)
    assert collect(s, s.schedule()) == [a]
    s.abort([b])
    s.add(d)
    s.abort([d])  # never scheduled: the runner never heard of it
    out = s.schedule()
    assert batch(out) == [("c#0", 3, 1)] and out.finished_seq_ids == ["a#0", "b#0"]
    s.abort([c])
    out = s.schedule()  # nothing to run: the news wait for a step that runs
    assert out.is_empty and out.finished_seq_ids == []
    e = seq("e", 2, start=40)
    s.add(e)
    out = s.schedule()
    assert batch(out) == [("e#0", 0, 2)] and out.finished_seq_ids == ["c#0"]
    assert s.schedule().finished_seq_ids == []


def test_a_sequence_left_out_for_the_budget_breaks_the_same_batch():
    s = make(budget=2)
    for i in range(3):
        s.add(seq(f"r{i}", 1, start=10 * i + 1))
    out = s.schedule()  # two prompts of one token; the third waits for the budget
    assert batch(out) == [("r0#0", 0, 1), ("r1#0", 0, 1)]
    collect(s, out)
    out = s.schedule()  # the same two decode: the same batch (r2 still waits)
    assert batch(out) == [("r0#0", 1, 1), ("r1#0", 1, 1)] and out.same_batch
    collect(s, out)
    s.max_num_batched_tokens = 1
    out = s.schedule()  # r1 is left out
    assert batch(out) == [("r0#0", 2, 1)] and not out.same_batch
    collect(s, out)
    s.max_num_batched_tokens = 2
    out = s.schedule()  # both again, but r1 sampled nothing last step: not the same batch
    assert batch(out) == [("r0#0", 3, 1), ("r1#0", 2, 1)] and not out.same_batch


def test_the_step_message_leaves_the_driver_objects_home():
    s = make()
    s.add(seq("a", 5))
    out = s.schedule()
    wire = pickle.loads(pickle.dumps(out))
    assert wire.seqs == [] and wire.preempted == [] and wire.num_prompt_tokens == 0
    assert (batch(wire), changes(wire), wire.partial) == (batch(out), changes(out), out.partial)
    assert wire.new_seqs[0].params == out.new_seqs[0].params
