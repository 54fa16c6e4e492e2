"""Compiled grammars, cached by constraint, compiled in a thread pool so that the engine loop never waits.

A compile over a 128k vocabulary takes tens of milliseconds to seconds (JSON schemas with many
properties): far too long for the step loop. `submit` returns a future at once; the same constraint
submitted again (every request of a batch job sends the same schema) gets the same future, finished or
not, so it is compiled once. The cache holds `cache_size` constraints, least recently used out first;
failures are kept too (a bad grammar stays bad). xgrammar releases the GIL while it compiles.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import xgrammar as xgr

from engine_service.core.structured_outputs import StructuredOutputsParams
from engine_service.structured import grammar


class GrammarCompiler:
    def __init__(
        self, make_info: Callable[[], xgr.TokenizerInfo], max_threads: int = 2, cache_size: int = 256
    ):
        # The vocabulary is read on the first compile (a second or two for 128k tokens), not at start-up.
        self._make_info = make_info
        self._compiler: xgr.GrammarCompiler | None = None
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grammar-compile")
        self._cache: OrderedDict[tuple, Future] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the cache: held for microseconds (the engine loop takes it)
        self._init_lock = threading.Lock()  # the vocabulary's first read: held by a compile thread only

    def submit(self, params: StructuredOutputsParams) -> Future:
        """A future of the CompiledGrammar; it raises ValueError (naming the field) for a bad constraint."""
        key = params.key
        with self._lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                return future
            future = self._pool.submit(self._compile, params)
            self._cache[key] = future
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return future

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _compile(self, params: StructuredOutputsParams) -> xgr.CompiledGrammar:
        parsed = grammar.parse(params)
        return self._xgr().compile_grammar(parsed)

    def _xgr(self) -> xgr.GrammarCompiler:
        with self._init_lock:
            if self._compiler is None:
                # Our cache keys by the constraint; xgrammar's own would key the same grammars again.
                self._compiler = xgr.GrammarCompiler(self._make_info(), max_threads=1, cache_enabled=False)
            return self._compiler
