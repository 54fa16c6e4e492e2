"""A worker process that decodes and parses large request bodies, so that the event loop never does.

`json.loads` holds the GIL for the whole of one C call (0.2-3 s for a 57 MB body), so a thread would stall
the event loop just the same; a process does not. What crosses back is the parsed request (or the error
to answer with), with long token-id lists as arrays, which unpickle as one copy instead of one object per
id. The pool starts on the first large body (most routers never see one) and is rebuilt if a worker dies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import multiprocessing
from array import array
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from router.api.body import decode, parse_json
from router.errors import OpenAIError

log = logging.getLogger(__name__)
T = TypeVar("T")

_COMPACT_MIN = 1024  # token-id lists at least this long cross back as arrays


class BodyPool:
    def __init__(self, workers: int = 1):
        self._workers = workers
        self._executor: ProcessPoolExecutor | None = None

    async def parse(self, parse: Callable[[object], T], raw: bytes, encoding: str, limit: int) -> T:
        loop = asyncio.get_running_loop()
        try:
            ok, value = await loop.run_in_executor(self._pool(), _job, parse, raw, encoding, limit)
        except BrokenProcessPool:  # the worker died (out of memory, killed): start afresh next time
            log.warning("the body parser process died; starting a new one")
            self._executor = None
            raise _unparsable() from None
        if not ok:
            raise value
        return value

    def warm(self) -> None:
        """Starts the worker now (a spawned interpreter takes a second or two), not at the first big body."""
        self._pool().submit(int)

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn: a fork of the router would copy its event loop, sockets and gRPC channels.
            self._executor = ProcessPoolExecutor(
                self._workers, mp_context=multiprocessing.get_context("spawn")
            )
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def _unparsable() -> OpenAIError:
    return OpenAIError(
        413, "The request body is too large to parse within this server's memory.", code="request_too_large"
    )


def _job(parse, raw: bytes, encoding: str, limit: int) -> tuple[bool, object]:
    """In the worker: (True, the parsed request) or (False, the OpenAIError to raise)."""
    try:
        return True, _compact(parse(parse_json(decode(raw, encoding, limit))))
    except OpenAIError as err:
        return False, err
    except MemoryError:
        return False, _unparsable()


def _compact(value):
    """Long lists of token ids as arrays (in tuples and dataclass fields, where parsers put them)."""
    if isinstance(value, list) and len(value) >= _COMPACT_MIN and all(type(v) is int for v in value):
        try:
            return array("q", value)
        except OverflowError:  # ids past 2^63 stay a list, to be refused against the vocabulary
            return value
    if isinstance(value, tuple):
        return tuple(_compact(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: _compact(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), tuple | list)
        }
        return dataclasses.replace(value, **changes)
    return value
