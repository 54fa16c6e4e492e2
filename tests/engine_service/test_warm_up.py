"""The service's warm-up runs the step shapes serving meets (so Triton compiles them before SERVING)."""

from __future__ import annotations

from engine_service.engine.engine_loop import WARM_UP_WAVES, warm_up
from tests.engine_service.server_thread import tiny_engine


def test_warm_up_mixes_prefills_into_decodes_and_leaves_the_engine_empty(tiny_model_dir):
    engine = tiny_engine(tiny_model_dir, load_format="dummy")
    steps = []
    schedule = engine.scheduler.schedule

    def recording_schedule():
        out = schedule()
        steps.append([(s.start < s.seq.num_prompt_tokens, s.num_new_tokens) for s in out.scheduled])
        return out

    engine.scheduler.schedule = recording_schedule
    warm_up(engine)
    assert (
        not engine.has_unfinished()
        and engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    )
    lone_prefill, *_ = steps
    assert lone_prefill == [(True, WARM_UP_WAVES[0][0])]
    mixed = [s for s in steps if any(p for p, _ in s) and any(not p for p, _ in s)]
    assert len(mixed) >= len(WARM_UP_WAVES) - 1  # every later wave joined a decoding batch
    assert max(len(s) for s in steps) >= 5  # several sequences in one step
    assert engine.num_generation_tokens == 4 * sum(len(w) for w in WARM_UP_WAVES)


def test_warm_up_fits_a_small_kv_cache(tiny_model_dir):
    engine = tiny_engine(tiny_model_dir, load_format="dummy", num_kv_blocks=2, max_model_len=64)
    warm_up(engine)  # prompts are cut to what the cache holds; the scheduler queues what does not fit
    assert not engine.has_unfinished()
