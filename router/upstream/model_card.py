"""What the router knows about a served model: the facts from the engines' `GetModelInfo`."""

from __future__ import annotations

from dataclasses import dataclass

from pagoda.engine.v1 import engine_pb2


@dataclass(frozen=True, slots=True)
class ModelCard:
    name: str
    max_model_len: int
    block_size: int  # tokens per KV block: the unit prefix affinity hashes in
    vocab_size: int
    is_embedding: bool = False  # an embedding model: /v1/embeddings only
    embedding_size: int = 0
    matryoshka: bool = False
    matryoshka_dimensions: tuple[int, ...] = ()

    @classmethod
    def from_pb(cls, info: engine_pb2.ModelInfo) -> ModelCard:
        return cls(
            name=info.served_model_name,
            max_model_len=info.max_model_len,
            block_size=max(1, info.block_size),
            vocab_size=info.vocab_size,
            is_embedding=info.task == engine_pb2.MODEL_TASK_EMBED,
            embedding_size=info.embedding_size,
            matryoshka=info.matryoshka,
            matryoshka_dimensions=tuple(info.matryoshka_dimensions),
        )
