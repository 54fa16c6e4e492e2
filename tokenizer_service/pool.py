"""Worker threads that tokenize off the event loop, one tokenizer each.

Threads (not processes) are enough: the Rust tokenizer releases the GIL while it encodes, so a
100k-token prompt in one worker does not stall the event loop or the other workers. Each thread
gets its own tokenizer because a Hugging Face tokenizer shared across threads can fail with
"Already borrowed" when one call changes its truncation settings while another encodes.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from tokenizer_service.tokenizer import ModelTokenizer, load_hf_tokenizer

T = TypeVar("T")


class TokenizerPool:
    def __init__(self, tokenizers: list[ModelTokenizer]) -> None:
        assert tokenizers
        self.first = tokenizers[0]  # for facts that do not change (vocabulary, template)
        # As many tokenizers as threads: a job never waits here.
        self._free: queue.SimpleQueue[ModelTokenizer] = queue.SimpleQueue()
        for tokenizer in tokenizers:
            self._free.put(tokenizer)
        self._executor = ThreadPoolExecutor(len(tokenizers), thread_name_prefix="tokenizer")

    @classmethod
    def load(cls, model_dir: Path, workers: int) -> TokenizerPool:
        return cls([ModelTokenizer(load_hf_tokenizer(model_dir)) for _ in range(max(1, workers))])

    async def run(self, job: Callable[[ModelTokenizer], T]) -> T:
        """Runs job(tokenizer) on a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, job)

    def _run(self, job: Callable[[ModelTokenizer], T]) -> T:
        tokenizer = self._free.get()
        try:
            return job(tokenizer)
        finally:
            self._free.put(tokenizer)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
