"""One generation request as handlers see it: its prompts' engine streams opened (with retries), their
messages merged in order of arrival, and the usage summed. Chat and completions format the messages."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence

from pagoda.engine.v1 import engine_pb2
from router import request_telemetry
from router.api.sampling import value_of
from router.errors import OpenAIError, bad_request
from router.metrics import RouterMetrics
from router.upstream.dispatch import Dispatcher, EngineStream, EngineStreamError
from router.upstream.model_card import ModelCard

FINISH_REASONS = {engine_pb2.FINISH_REASON_STOP: "stop", engine_pb2.FINISH_REASON_LENGTH: "length"}
_ABORT = engine_pb2.FINISH_REASON_ABORT


class Generation:
    """`n` samples for each of one or more prompts; choice index = prompt index * n + sample index."""

    def __init__(
        self, request_id: str, model: str, n: int, streams: list[EngineStream], metrics: RouterMetrics
    ):
        self.id = request_id
        self.model = model
        self.created = int(time.time())
        self.n = n
        self.num_choices = n * len(streams)
        self.streams = streams
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0
        self.hide_completion = False  # the tokens are drawn but not returned (max_tokens 0 with echo)
        self._metrics = metrics

    @classmethod
    async def open(
        cls,
        dispatcher: Dispatcher,
        card: ModelCard,
        id_prefix: str,
        prompts: Sequence[Sequence[int]],
        sampling: engine_pb2.SamplingParams,
        *,
        started: float,
        cache_salt: str = "",
        session_key: str | None = None,
    ) -> Generation:
        """Opens every prompt's engine stream; returns once each has its first message. `started` is the
        request's arrival (time.perf_counter()), for the time-to-first-token metric."""
        if card.is_embedding:
            raise bad_request(f"The model `{card.name}` is an embedding model: use /v1/embeddings.", "model")
        request_id = f"{id_prefix}-{uuid.uuid4().hex}"
        tel = request_telemetry.current()
        if tel is not None:
            tel.model = card.name
        requests = [
            engine_pb2.GenerateRequest(
                request_id=request_id if len(prompts) == 1 else f"{request_id}-{i}",
                prompt_token_ids=engine_pb2.TokenIds(ids=ids),
                sampling_params=sampling,
                cache_salt=cache_salt,
            )
            for i, ids in enumerate(prompts)
        ]
        if len(requests) == 1:
            streams = [await dispatcher.open(card, requests[0], session_key)]
        else:
            tasks = [asyncio.ensure_future(dispatcher.open(card, r, session_key)) for r in requests]
            try:
                streams = list(await asyncio.gather(*tasks))
            except BaseException:  # one prompt failed, or the client left: close what opened, stop the rest
                for t in tasks:
                    if not t.done():
                        t.cancel()
                    elif not t.cancelled() and t.exception() is None:
                        t.result().close()
                raise
        ttft = time.perf_counter() - started
        dispatcher.metrics.ttft_seconds.labels(card.name).observe(ttft)
        if tel is not None:
            tel.ttft_s = ttft
        return cls(request_id, card.name, value_of(sampling, "n"), streams, dispatcher.metrics)

    def close(self) -> None:
        for s in self.streams:
            s.close()
        self._metrics.prompt_tokens.labels(self.model).inc(self.prompt_tokens)
        self._metrics.generation_tokens.labels(self.model).inc(self.completion_tokens)
        tel = request_telemetry.current()
        if tel is not None:
            tel.prompt_tokens, tel.completion_tokens = self.prompt_tokens, self.completion_tokens
            tel.cached_tokens = self.cached_tokens

    @property
    def usage(self) -> dict:
        completion = 0 if self.hide_completion else self.completion_tokens
        usage = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }
        if self.cached_tokens:
            usage["prompt_tokens_details"] = {"cached_tokens": self.cached_tokens}
        return usage

    async def messages(self) -> AsyncIterator[tuple[int, engine_pb2.GenerateResponse]]:
        """(choice index, message) pairs until every stream ended; usage is summed on the way."""
        if len(self.streams) == 1:
            async for msg in self.streams[0]:
                self._check(msg)
                yield msg.index, msg
            return
        async for i, msg in self._merged():
            self._check(msg)
            yield i * self.n + msg.index, msg

    def _check(self, msg: engine_pb2.GenerateResponse) -> None:
        if not msg.finish_reason:  # the common message: usage and aborts come with a sample's end
            return
        if msg.HasField("usage"):
            self._add_usage(msg.usage)
        if msg.finish_reason == _ABORT:
            raise EngineStreamError(
                OpenAIError(
                    503, "The engine aborted the request (it may be shutting down).", type="server_error"
                )
            )

    def _add_usage(self, usage: engine_pb2.Usage) -> None:
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.cached_tokens += usage.cached_prompt_tokens

    async def _merged(self) -> AsyncIterator[tuple[int, engine_pb2.GenerateResponse]]:
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(i: int, stream: EngineStream) -> None:
            try:
                async for msg in stream:
                    queue.put_nowait((i, msg))
                queue.put_nowait(done)
            except Exception as err:  # handed to the consumer, which raises it
                queue.put_nowait(err)

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(self.streams)]
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is done:
                    remaining -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()
