"""Protobuf <-> engine types, so that servicer methods stay a few lines.

Unset optional sampling fields take SamplingParams' declared defaults (the one definition), so a gRPC
request and an offline one with the same fields sample alike; max_tokens unset means "as many as fit".
"""

from __future__ import annotations

from engine_service.core.outputs import TokenLogprobs
from engine_service.core.sampling_params import SamplingParams
from engine_service.engine.engine import EngineStats, ModelInfo
from engine_service.engine.kv_event_hub import KvEventBatch, KvSnapshot
from engine_service.engine.output_processor import SampleDelta
from pagoda.engine.v1 import engine_pb2 as pb

MAX_REQUEST_ID_LEN = 256
MAX_EMBED_INPUTS = 2048  # OpenAI's limit on one embeddings request

FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "abort": pb.FINISH_REASON_ABORT,
}


def sampling_params_from_pb(p: pb.SamplingParams) -> SamplingParams:
    """Raises ValueError for what SamplingParams cannot express; SamplingParams.validate checks the rest."""
    return SamplingParams.from_pb(p)


def check_generates(info) -> None:
    """Generate and Multiplex need a generating engine (an embedding model's answers Embed only)."""
    if info.task == "embed":
        raise ValueError("this engine serves an embedding model: call Embed, not Generate")


def check_request_id(request_id: str) -> None:
    if len(request_id) > MAX_REQUEST_ID_LEN:
        raise ValueError(f"request_id must be at most {MAX_REQUEST_ID_LEN} characters, got {len(request_id)}")


class TokenTexts:
    """Each token's text decoded on its own (for logprobs), cached: a vocabulary is decoded at most once."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id]) if self._tokenizer is not None else ""
            self._cache[token_id] = text
        return text


def delta_to_pb(d: SampleDelta, token_text: TokenTexts) -> pb.GenerateResponse:
    return fill_response(pb.GenerateResponse(), d, token_text)


def fill_response(msg: pb.GenerateResponse, d: SampleDelta, token_text: TokenTexts) -> pb.GenerateResponse:
    """Sets an empty GenerateResponse (a new one, or one inside a MultiplexResponse) from a delta."""
    if d.index:
        msg.index = d.index
    msg.token_ids.extend(d.token_ids)
    if d.text:
        msg.text = d.text
    if d.logprobs:
        msg.logprobs.extend(_position_logprobs(lp, token_text) for lp in d.logprobs)
    if d.prompt_logprobs:
        msg.prompt_logprobs.extend(_position_logprobs(lp, token_text) for lp in d.prompt_logprobs)
    if d.finish_reason is not None:
        msg.finish_reason = FINISH_REASONS[d.finish_reason]
        if d.stop_reason is not None:
            msg.stop_reason = str(d.stop_reason)
    if d.usage is not None:
        u = d.usage
        msg.usage.CopyFrom(
            pb.Usage(
                prompt_tokens=u.prompt_tokens,
                completion_tokens=u.completion_tokens,
                cached_prompt_tokens=u.cached_prompt_tokens,
            )
        )
    return msg


def _position_logprobs(lp: TokenLogprobs, token_text: TokenTexts) -> pb.PositionLogprobs:
    sampled = pb.TokenLogprob(
        token_id=lp.token_id, logprob=lp.logprob, token=token_text(lp.token_id), rank=lp.rank
    )
    top = [
        pb.TokenLogprob(token_id=t, logprob=v, token=token_text(t), rank=r)
        for r, (t, v) in enumerate(lp.top, 1)
    ]
    return pb.PositionLogprobs(sampled=sampled, top=top)


def model_info_to_pb(info: ModelInfo) -> pb.ModelInfo:
    return pb.ModelInfo(
        served_model_name=info.served_model_name,
        model_path=info.model_path,
        architecture=info.architecture,
        max_model_len=info.max_model_len,
        block_size=info.block_size,
        vocab_size=info.vocab_size,
        eos_token_ids=list(info.eos_token_ids),
        dtype=info.dtype,
        device=info.device,
        tensor_parallel_size=info.tensor_parallel_size,
        max_num_seqs=info.max_num_seqs,
        num_kv_blocks=info.num_kv_blocks,
        task=pb.MODEL_TASK_EMBED if info.task == "embed" else pb.MODEL_TASK_GENERATE,
        embedding_size=info.embedding_size,
        matryoshka=info.matryoshka,
        matryoshka_dimensions=list(info.matryoshka_dimensions),
    )


def check_embed_request(request: pb.EmbedRequest, info: ModelInfo, dimensions: int | None) -> None:
    n = len(request.inputs)
    if not 1 <= n <= MAX_EMBED_INPUTS:
        raise ValueError(f"inputs must hold 1 to {MAX_EMBED_INPUTS} inputs, got {n}")
    if dimensions is None:
        return
    if not info.matryoshka:
        raise ValueError("dimensions: this model's embeddings cannot be shortened (not a Matryoshka model)")
    allowed = info.matryoshka_dimensions
    if allowed and dimensions not in allowed:
        raise ValueError(f"dimensions must be one of {list(allowed)}, got {dimensions}")
    if not 1 <= dimensions <= info.embedding_size:
        raise ValueError(f"dimensions must be in [1, {info.embedding_size}], got {dimensions}")


def embed_response(vectors: list[list[float]], prompts: list[list[int]], dimensions: int | None):
    """The vectors, shortened to `dimensions` and renormalised (Matryoshka), with token counts."""
    out = pb.EmbedResponse(prompt_tokens=sum(len(p) for p in prompts))
    for vector, prompt in zip(vectors, prompts, strict=True):
        if dimensions is not None:
            vector = vector[:dimensions]
            norm = sum(v * v for v in vector) ** 0.5
            vector = [v / norm for v in vector] if norm > 0 else vector
        out.embeddings.append(pb.Embedding(values=vector, num_tokens=len(prompt)))
    return out


def server_info_to_pb(stats: EngineStats, generation_tokens_per_s: float, draining: bool) -> pb.ServerInfo:
    return pb.ServerInfo(
        num_running=stats.num_running,
        num_waiting=stats.num_waiting,
        kv_cache_usage=stats.kv_cache_usage,
        prefix_cache_hit_rate=stats.prefix_cache_hit_rate,
        generation_tokens_per_s=generation_tokens_per_s,
        draining=draining,
        num_free_blocks=stats.num_free_blocks,
        num_total_blocks=stats.num_total_blocks,
        num_steps=stats.num_steps,
    )


SNAPSHOT_CHUNK = 4096  # hashes per snapshot message (~140 KiB): far below any gRPC message limit


def kv_events_to_pb(
    item: KvSnapshot | KvEventBatch, block_size: int, include_token_ids: bool
) -> list[pb.KvEventsResponse]:
    """A hub item as the messages of SubscribeKvEvents: a snapshot in chunks, a batch in one message."""
    if isinstance(item, KvSnapshot):
        keys = item.keys
        starts = range(0, len(keys), SNAPSHOT_CHUNK) if keys else [0]
        return [
            pb.KvEventsResponse(
                snapshot=pb.KvCacheSnapshot(
                    seq=item.seq,
                    block_size=block_size,
                    block_hashes=keys[i : i + SNAPSHOT_CHUNK],
                    last=i + SNAPSHOT_CHUNK >= len(keys),
                )
            )
            for i in starts
        ]
    events = []
    for event in item.events:
        if event[0] == "stored":
            _, keys, parent, tokens = event
            stored = pb.KvBlocksStored(block_hashes=keys, parent_block_hash=parent or b"")
            if include_token_ids:
                stored.token_ids.extend(tokens)
            events.append(pb.KvEvent(stored=stored))
        elif event[0] == "removed":
            events.append(pb.KvEvent(removed=pb.KvBlocksRemoved(block_hashes=event[1])))
        else:
            events.append(pb.KvEvent(cleared=pb.KvAllBlocksCleared()))
    return [pb.KvEventsResponse(batch=pb.KvEventBatch(seq=item.seq, timestamp=item.time, events=events))]
