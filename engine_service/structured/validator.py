"""The gRPC front's check of a constraint, before the request is queued: its syntax, off the event loop.

Parsing needs no vocabulary and takes milliseconds (compiling over the vocabulary is the engine's, in
its own thread pool): a schema that is not valid, or that xgrammar cannot handle, is INVALID_ARGUMENT
naming the field, and nothing was queued. A parse that takes longer than `timeout_s` is refused the same
way. Results are kept for the last `cache_size` constraints: a batch job's thousand requests with one
schema parse it once.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from engine_service.core.structured_outputs import StructuredOutputsParams
from engine_service.structured import grammar


class ConstraintValidator:
    def __init__(self, timeout_s: float = 30.0, max_threads: int = 2, cache_size: int = 1024):
        self.timeout_s = timeout_s
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grammar-parse")
        self._results: OrderedDict[tuple, str | None] = OrderedDict()  # key -> error message or None
        self._cache_size = cache_size
        self._lock = threading.Lock()

    async def check(self, params: StructuredOutputsParams, field: str = grammar.FIELD) -> None:
        """Raises ValueError (naming the field) when the constraint cannot be used."""
        params.validate(field)
        key = params.key
        with self._lock:
            known = key in self._results
            error = self._results.get(key)
        if not known:
            future = asyncio.get_running_loop().run_in_executor(self._pool, self._parse, params, field)
            try:
                error = await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
            except TimeoutError:
                raise ValueError(
                    f"{field}: the constraint took longer than {self.timeout_s:g} s to parse (simplify it)"
                ) from None
        if error is not None:
            raise ValueError(error)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _parse(self, params: StructuredOutputsParams, field: str) -> str | None:
        try:
            grammar.parse(params, field)
            error = None
        except ValueError as e:
            error = str(e)
        with self._lock:
            self._results[params.key] = error
            while len(self._results) > self._cache_size:
                self._results.popitem(last=False)
        return error
