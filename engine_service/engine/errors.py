"""The engine front's failures; the server maps them to gRPC status codes (server/errors.py)."""

from __future__ import annotations


class EngineUnavailableError(RuntimeError):
    """Not taking requests now: loading the model, or draining. Another engine may take it."""


class EngineOverloadedError(RuntimeError):
    """The waiting queue is full (--max-waiting)."""


class EngineDeadError(RuntimeError):
    """The engine loop died or stalled; the process is exiting."""
