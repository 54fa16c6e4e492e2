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
        self.draining = False

    def ready(self) -> AsyncEngine:
        if self.engine is None:
            raise EngineUnavailableError("the engine is still loading its model")
        if self.engine.error is not None:
            raise EngineDeadError(f"engine failed: {self.engine.error}")
        return self.engine

    def accepting(self) -> AsyncEngine:
        engine = self.ready()
        if self.draining:
            raise EngineUnavailableError("the engine is shutting down and takes no new requests")
        return engine
