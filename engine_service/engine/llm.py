"""The offline API: `LLM(model=...).generate(...)`, driving the same add_request / step loop as the server."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence as Seq
from dataclasses import fields

from engine_service.core.config import EngineConfig
from engine_service.core.outputs import CompletionOutput, RequestMetrics, RequestOutput
from engine_service.core.sampling_params import SamplingParams
from engine_service.engine.engine import Engine
from engine_service.engine.output_processor import OutputProcessor

_ENGINE_FIELDS = {f.name for f in fields(EngineConfig)}


class LLM:
    def __init__(self, model: str | None = None, **kwargs):
        unknown = set(kwargs) - _ENGINE_FIELDS
        if unknown:
            raise TypeError(f"LLM() got unknown arguments: {sorted(unknown)}")
        from pagoda.models import resolve_model

        self.engine = Engine(EngineConfig(model=str(resolve_model(model)), **kwargs))
        self._ids = itertools.count()

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: str | Seq[str] | None = None,
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        prompt_token_ids: Seq[Seq[int]] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt (text or token ids) and return the outputs in prompt order."""
        token_lists = self._token_lists(prompts, prompt_token_ids)
        params = sampling_params or SamplingParams()
        params_list = [params] * len(token_lists) if isinstance(params, SamplingParams) else list(params)
        if len(params_list) != len(token_lists):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(token_lists)} prompts")
        texts = [prompts] if isinstance(prompts, str) else list(prompts or [None] * len(token_lists))

        # Validate everything first, so a bad prompt raises before any request enters the loop.
        processor = OutputProcessor(self.engine.tokenizer)
        rids = [f"llm-{next(self._ids)}" for _ in token_lists]
        for rid, ids, p in zip(rids, token_lists, params_list, strict=True):
            self.engine.validate(ids, p)
            processor.add_request(rid, ids, p)
        has_text = self.engine.tokenizer is not None
        results: dict[str, RequestOutput] = {}
        order = []
        for rid, ids, p, text in zip(rids, token_lists, params_list, texts, strict=True):
            self.engine.add_request(rid, ids, p)
            order.append(rid)
            results[rid] = RequestOutput(
                request_id=rid,
                prompt_token_ids=list(ids),
                prompt=text,
                num_cached_tokens=0,
                outputs=[
                    CompletionOutput(
                        i, [], "" if has_text else None, None, logprobs=[] if p.logprobs is not None else None
                    )
                    for i in range(p.n)
                ],
                metrics=RequestMetrics(arrival_time=time.monotonic()),
            )
        while self.engine.has_unfinished():
            # The output processor detokenizes and applies stop strings; a stop string ends a sample
            # here, and the engine is told to drop it.
            deltas, aborts = processor.process(self.engine.step())
            for rid, index in aborts:
                self.engine.abort(rid, index)
            for delta in deltas:
                result = results[delta.request_id]
                out = result.outputs[delta.index]
                out.token_ids += delta.token_ids
                if has_text:
                    out.text += delta.text
                if delta.logprobs is not None:
                    out.logprobs += delta.logprobs
                if delta.prompt_logprobs is not None:
                    result.prompt_logprobs = delta.prompt_logprobs
                if result.metrics.first_token_time is None:
                    result.metrics.first_token_time = time.monotonic()
                if delta.finish_reason is not None:
                    out.finish_reason, out.stop_reason = delta.finish_reason, delta.stop_reason
                if delta.usage is not None:
                    result.num_cached_tokens = delta.usage.cached_prompt_tokens
                    result.metrics.finished_time = time.monotonic()
        return [results[rid] for rid in order]

    def start_profile(self, trace_dir: str) -> None:
        """Profile what follows (torch.profiler, host and device, every tensor-parallel rank) until
        stop_profile, as vLLM's LLM.start_profile does. Call it between generate calls; the traces open
        in Perfetto or chrome://tracing."""
        self.engine.executor.start_profile(trace_dir)

    def stop_profile(self) -> list[str]:
        """Stop the profile; each rank writes its Chrome trace as trace_dir/rank<r>.json (paths returned)."""
        return self.engine.executor.stop_profile()

    def _token_lists(self, prompts, prompt_token_ids) -> list[list[int]]:
        if (prompts is None) == (prompt_token_ids is None):
            raise ValueError("give exactly one of prompts (text) and prompt_token_ids")
        if prompt_token_ids is not None:
            return [list(ids) for ids in prompt_token_ids]
        if self.engine.tokenizer is None:
            raise ValueError(
                "text prompts need a tokenizer, and the model folder has none: pass prompt_token_ids"
            )
        texts = [prompts] if isinstance(prompts, str) else list(prompts)
        return [self.engine.tokenizer.encode(t) for t in texts]
