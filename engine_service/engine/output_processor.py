"""The one place that turns the engine's SequenceUpdates into what clients see: text deltas and finishes.

Per (request, sample) it keeps an incremental detokenizer (engine_service/engine/detokenizer.py) that decodes
new tokens, holds text back only while it could begin a stop string, and reports a stop-string match.
A match ends the sample here at once; the engine does not know about stop strings, so `process` also
returns the (request_id, index) pairs the caller must abort in the engine. Updates that arrive for a
sample already ended (the engine ran a step before the abort reached it) are dropped.

Both front ends use it: the offline LLM (which calls engine.abort itself) and the gRPC service (which
sends the aborts to the engine loop).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from engine_service.core.outputs import SequenceUpdate, TokenLogprobs
from engine_service.core.sampling_params import SamplingParams
from engine_service.engine.detokenizer import IncrementalDetokenizer
from engine_service.engine.updates_codec import PackedUpdates


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int  # summed over the n samples
    cached_prompt_tokens: int


@dataclass
class SampleDelta:
    """What one sample produced since its previous delta. The request's last delta carries usage."""

    request_id: str
    index: int
    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprobs] | None
    finish_reason: str | None = None  # None | "stop" | "length" | "abort"
    stop_reason: int | str | None = None  # the stop token id or stop string that ended the sample
    usage: Usage | None = None
    prompt_logprobs: list[TokenLogprobs] | None = None  # on sample 0's first delta, when asked for

    def merge(self, later: SampleDelta) -> None:
        """Append a later delta of the same sample (to send several steps' tokens in one message)."""
        self.token_ids += later.token_ids
        self.text += later.text
        if later.logprobs is not None:
            self.logprobs = (self.logprobs or []) + later.logprobs
        self.finish_reason, self.stop_reason = later.finish_reason, later.stop_reason
        self.usage = later.usage or self.usage
        self.prompt_logprobs = self.prompt_logprobs or later.prompt_logprobs


class _Sample:
    __slots__ = ("detokenizer", "num_tokens", "finished")

    def __init__(self, detokenizer: IncrementalDetokenizer | None):
        self.detokenizer = detokenizer
        self.num_tokens = 0
        self.finished = False


class _Request:
    __slots__ = ("params", "num_prompt_tokens", "num_cached_tokens", "samples", "num_open")

    def __init__(self, params: SamplingParams, num_prompt_tokens: int, samples: list[_Sample]):
        self.params = params
        self.num_prompt_tokens = num_prompt_tokens
        self.num_cached_tokens = 0
        self.samples = samples
        self.num_open = len(samples)

    def usage(self) -> Usage:
        completion = sum(s.num_tokens for s in self.samples)
        return Usage(self.num_prompt_tokens, completion, self.num_cached_tokens)


class OutputProcessor:
    """Not thread-safe: the thread that owns it feeds it every update."""

    def __init__(self, tokenizer):
        self.tokenizer = (
            tokenizer  # None: the model folder has no tokenizer, so no text (and no stop strings)
        )
        self._requests: dict[str, _Request] = {}

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    def __len__(self) -> int:
        return len(self._requests)

    def add_request(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        if request_id in self._requests:
            raise ValueError(f"request_id {request_id!r} is already in use")
        if params.stop and self.tokenizer is None:
            raise ValueError("stop strings need the model's tokenizer, and the model folder has none")
        samples = [_Sample(self._detokenizer(prompt_token_ids, params)) for _ in range(params.n)]
        self._requests[request_id] = _Request(params, len(prompt_token_ids), samples)

    def process(self, updates: Iterable[SequenceUpdate]) -> tuple[list[SampleDelta], list[tuple[str, int]]]:
        """Returns the deltas to deliver, and the (request_id, index) samples to abort in the engine."""
        deltas: list[SampleDelta] = []
        aborts: list[tuple[str, int]] = []
        for u in updates:
            self._process_update(u, deltas, aborts)
        return deltas, aborts

    def process_packed(self, packed: PackedUpdates) -> tuple[list[SampleDelta], list[tuple[str, int]]]:
        """`process` over a step's updates as the engine built them: the plain rows (one token for
        sample 0, nothing else) straight from their columns, with no SequenceUpdate made for them."""
        deltas: list[SampleDelta] = []
        aborts: list[tuple[str, int]] = []
        process = self._process
        rows = zip(packed.request_ids, packed.token_ids, packed.num_cached_tokens, strict=True)
        for request_id, token, cached in rows:  # hot: once per token of the step
            process(request_id, 0, (token,), None, None, None, cached, deltas, aborts)
        for u in packed.other:
            self._process_update(u, deltas, aborts)
        return deltas, aborts

    def _process_update(
        self, u: SequenceUpdate, deltas: list[SampleDelta], aborts: list[tuple[str, int]]
    ) -> None:
        self._process(
            u.request_id,
            u.index,
            u.new_token_ids,
            u.new_logprobs,
            u.finish_reason,
            u.stop_reason,
            u.num_cached_tokens,
            deltas,
            aborts,
            u.prompt_logprobs,
        )

    def abort(self, request_id: str) -> list[SampleDelta]:
        """Ends every open sample of the request with finish_reason "abort" (flushing held-back text)."""
        request = self._requests.get(request_id)
        if request is None:
            return []
        deltas = []
        for index, sample in enumerate(request.samples):
            if sample.finished:
                continue
            text = sample.detokenizer.update((), finished=True).text if sample.detokenizer else ""
            delta = SampleDelta(request_id, index, [], text, None, "abort")
            self._finish_sample(request_id, request, delta)
            deltas.append(delta)
        return deltas

    # ---- internals -----------------------------------------------------------------------------
    def _detokenizer(
        self, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> IncrementalDetokenizer | None:
        if self.tokenizer is None:
            return None
        return IncrementalDetokenizer(
            self.tokenizer,
            prompt_token_ids,
            skip_special_tokens=params.skip_special_tokens,
            stop=params.stop,
            include_stop_str_in_output=params.include_stop_str_in_output,
            min_tokens=params.min_tokens,
        )

    def _process(
        self,
        request_id: str,
        index: int,
        token_ids: Sequence[int],
        logprobs: list[TokenLogprobs] | None,
        finish_reason: str | None,
        stop_reason: int | str | None,
        num_cached_tokens: int,
        deltas: list[SampleDelta],
        aborts: list[tuple[str, int]],
        prompt_logprobs: list[TokenLogprobs] | None = None,
    ) -> None:
        """One update (its fields): its delta to `deltas`, a stop-string end to `aborts`."""
        request = self._requests.get(request_id)
        if request is None:
            return
        sample = request.samples[index]
        if sample.finished:
            return
        request.num_cached_tokens = num_cached_tokens
        delta = self._apply(
            request_id, sample, index, token_ids, logprobs, finish_reason, stop_reason, prompt_logprobs
        )
        if delta.finish_reason is not None:
            if finish_reason is None:  # ended by a stop string: the engine does not know yet
                aborts.append((request_id, index))
            self._finish_sample(request_id, request, delta)
        deltas.append(delta)

    @staticmethod
    def _apply(
        request_id: str,
        sample: _Sample,
        index: int,
        token_ids: Sequence[int],
        logprobs: list[TokenLogprobs] | None,
        finish_reason: str | None,
        stop_reason: int | str | None,
        prompt_logprobs: list[TokenLogprobs] | None,
    ) -> SampleDelta:
        text = ""
        if sample.detokenizer is not None:
            d = sample.detokenizer.update(
                token_ids,
                finished=finish_reason is not None,
                stop_token_ended=finish_reason == "stop" and isinstance(stop_reason, int),
            )
            text = d.text
            if d.stop_str is not None:  # a stop string: the tokens after it are not part of the output
                token_ids = token_ids[: d.num_token_ids]
                logprobs = logprobs[: d.num_token_ids] if logprobs is not None else None
                finish_reason, stop_reason = "stop", d.stop_str
        sample.num_tokens += len(token_ids)
        return SampleDelta(
            request_id,
            index,
            list(token_ids),
            text,
            logprobs,
            finish_reason,
            stop_reason,
            prompt_logprobs=prompt_logprobs,
        )

    def _finish_sample(self, request_id: str, request: _Request, delta: SampleDelta) -> None:
        request.samples[delta.index].finished = True
        request.num_open -= 1
        if request.num_open == 0:
            delta.usage = request.usage()
            del self._requests[request_id]
