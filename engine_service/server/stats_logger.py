"""A log line every few seconds while an engine is busy: throughput, queue, KV usage and prefix hits.

    engine stats: prompt 1523.4 tok/s, generation 812.0 tok/s, running 12, waiting 3, KV cache 41.2%,
    prefix cache hit rate 63.0% (last 5 s)

Throughputs and the hit rate are over the interval (prompt tokens computed, so cache hits are not counted
twice); running, waiting and KV usage are the latest step's. Idle intervals are not logged, except the
first, which shows the engine went quiet.
"""

from __future__ import annotations

import asyncio
import logging
import time

from engine_service.engine.engine import EngineStats
from pagoda.telemetry.logging import fields

log = logging.getLogger("engine_service.stats")


def stats_line(prev: EngineStats, now: EngineStats, elapsed_s: float) -> tuple[str, dict]:
    """The message and its structured fields for one interval."""
    prompt = (now.num_prompt_tokens - prev.num_prompt_tokens) / elapsed_s
    generation = (now.num_generation_tokens - prev.num_generation_tokens) / elapsed_s
    queries = now.num_prefix_query_tokens - prev.num_prefix_query_tokens
    hits = now.num_prefix_hit_tokens - prev.num_prefix_hit_tokens
    hit_rate = hits / queries if queries else 0.0
    message = (
        f"engine stats: prompt {prompt:.1f} tok/s, generation {generation:.1f} tok/s, "
        f"running {now.num_running}, waiting {now.num_waiting}, KV cache {100 * now.kv_cache_usage:.1f}%, "
        f"prefix cache hit rate {100 * hit_rate:.1f}% (last {elapsed_s:.0f} s)"
    )
    values = dict(
        prompt_tokens_per_s=round(prompt, 1),
        generation_tokens_per_s=round(generation, 1),
        num_running=now.num_running,
        num_waiting=now.num_waiting,
        kv_cache_usage=round(now.kv_cache_usage, 4),
        prefix_cache_hit_rate=round(hit_rate, 4),
        num_preemptions=now.num_preemptions - prev.num_preemptions,
    )
    return message, values


def _idle(prev: EngineStats, now: EngineStats) -> bool:
    return (
        now.num_running == now.num_waiting == 0
        and now.num_prompt_tokens == prev.num_prompt_tokens
        and now.num_generation_tokens == prev.num_generation_tokens
    )


async def log_stats(get_stats, interval_s: float) -> None:
    """Logs `get_stats()` (the latest EngineStats) every `interval_s` until cancelled."""
    prev, prev_t, was_idle = get_stats(), time.monotonic(), True
    while True:
        await asyncio.sleep(interval_s)
        now, t = get_stats(), time.monotonic()
        idle = _idle(prev, now)
        if not (idle and was_idle):
            message, values = stats_line(prev, now, t - prev_t)
            log.info(message, extra=fields(**values))
        prev, prev_t, was_idle = now, t, idle
