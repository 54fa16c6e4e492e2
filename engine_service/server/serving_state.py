"""ServingState: where the service is in its life, shared by the RPCs, the health service and metrics."""

from __future__ import annotations

from engine_service.engine.async_engine import AsyncEngine
from engine_service.engine.errors import EngineDeadError, EngineUnavailableError
from engine_service.server.convert import TokenTexts


class ServingState:
    """Where the service is in its life: loading -> serving -> draining (or failed)."""

    def __init__(self):
        self.engine: AsyncEngine | None = None  # set once the model is loaded and warm
        self.token_texts: TokenTexts | None = None
        # The most input bytes one token of the model's tokenizer covers (pagoda/prompt_bound.py): a text
        # prompt longer than the context times this is refused before it is tokenized. None: no bound.
        self.bytes_per_token: int | None = None
        self.draining = False

    def ready(self) -> AsyncEngine:
        if self.engine is None:
            raise EngineUnavailableError("the engine is still loading its model")
        if self.engine.error is not None:
            raise EngineDeadError(f"engine failed: {self.engine.error}")
        if self.engine.unresponsive is not None:  # a router's probe fails, and it moves away
            raise EngineUnavailableError(self.engine.unresponsive)
        return self.engine

    def accepting(self) -> AsyncEngine:
        engine = self.ready()
        if self.draining:
            raise EngineUnavailableError("the engine is shutting down and takes no new requests")
        return engine
