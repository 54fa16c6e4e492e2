"""The engine's side of structured outputs: requests waiting for their grammar, and each step's mask.

    add(request)      its constraint goes to the compiler; its sequences wait here, outside the scheduler
    take_ready()      compiled: each sequence gets a GrammarState and goes to the scheduler; a grammar that
                      failed, or took longer than `compile_timeout_s`, rejects the request (INVALID_ARGUMENT)
    fill_bitmask(out) the allowed tokens of every constrained row sampled in `out`, on the host

The engine calls fill_bitmask only once the previous step's tokens have been fed to the grammars (see
Engine._grammar_mask): the mask of a draw depends on every token before it.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass

import torch
import xgrammar as xgr

from engine_service.core.scheduler_output import SchedulerOutput
from engine_service.core.sequence import Sequence
from engine_service.core.structured_outputs import StructuredOutputsParams
from engine_service.structured import grammar
from engine_service.structured.compiler import GrammarCompiler
from engine_service.structured.state import GrammarState, ReasoningGate
from engine_service.worker.token_bitmask import TokenBitmask

BATCH_FILL_ROWS = 16  # from this many rows the mask is filled by xgrammar's thread pool


@dataclass
class _Waiting:
    request_id: str
    seqs: list[Sequence]
    params: StructuredOutputsParams
    future: Future
    deadline: float


class StructuredOutputManager:
    def __init__(
        self,
        hf_tokenizer,
        vocab_size: int,
        eos_token_ids: tuple[int, ...],
        device: torch.device,
        compile_timeout_s: float = 30.0,
        compile_threads: int = 2,
        fill_threads: int | None = None,
    ):
        self.tokenizer = hf_tokenizer  # None for a model folder without one: constraints are refused
        self.vocab_size = vocab_size
        self.device = device
        self.compile_timeout_s = compile_timeout_s
        self.compiler = GrammarCompiler(
            lambda: grammar.tokenizer_info(hf_tokenizer, vocab_size, eos_token_ids), compile_threads
        )
        self._waiting: dict[str, _Waiting] = {}
        self._rejected: list[tuple[str, str]] = []
        # Half the cores, at most 8 (vLLM's choice for its fill threads): the engine loop keeps one.
        self._batch = xgr.BatchGrammarMatcher(fill_threads or max(1, min(8, (os.cpu_count() or 2) // 2)))
        self.num_live = 0  # sequences with a grammar that the engine has not forgotten yet
        # Timing of the last masks filled (benchmarks read them): rows and seconds, summed until reset.
        self.fill_rows = 0
        self.fill_s = 0.0
        self.fill_calls = 0

    # ---- requests --------------------------------------------------------------------------------
    def check(self, params: StructuredOutputsParams) -> None:
        """Raise ValueError now if the engine cannot take this constraint (offline API: before queueing)."""
        if self.tokenizer is None:
            raise ValueError("structured_outputs needs the model's tokenizer, and the model folder has none")
        future = self.compiler.submit(params)
        try:
            future.result(timeout=self.compile_timeout_s)
        except TimeoutError:
            raise ValueError(_timeout_message(self.compile_timeout_s)) from None

    def add(self, request_id: str, seqs: list[Sequence], params: StructuredOutputsParams) -> None:
        if self.tokenizer is None:
            raise ValueError("structured_outputs needs the model's tokenizer, and the model folder has none")
        for marker in (params.reasoning_start, params.reasoning_end):
            if marker is not None:
                self._marker_ids(marker)  # raises now for a marker that is no token text of this model
        future = self.compiler.submit(params)
        self._waiting[request_id] = _Waiting(
            request_id, seqs, params, future, time.monotonic() + self.compile_timeout_s
        )

    @property
    def has_waiting(self) -> bool:
        return bool(self._waiting)

    def drop(self, request_id: str) -> list[Sequence] | None:
        """An aborted request that was still waiting for its grammar: its sequences, else None."""
        waiting = self._waiting.pop(request_id, None)
        return None if waiting is None else waiting.seqs

    def take_ready(self) -> list[Sequence]:
        """The sequences whose grammar is compiled, each with its GrammarState, in arrival order."""
        ready: list[Sequence] = []
        now = time.monotonic()
        for request_id, waiting in list(self._waiting.items()):
            future = waiting.future
            if not future.done():
                if now > waiting.deadline:
                    del self._waiting[request_id]
                    self._rejected.append((request_id, _timeout_message(self.compile_timeout_s)))
                continue
            del self._waiting[request_id]
            error = future.exception()
            if error is not None:
                self._rejected.append((request_id, str(error)))
                continue
            for seq in waiting.seqs:
                seq.grammar = GrammarState(future.result(), self._gate(seq, waiting.params))
            self.num_live += len(waiting.seqs)
            ready += waiting.seqs
        return ready

    def wait(self, timeout_s: float) -> None:
        """Block until a waiting grammar is compiled, at most `timeout_s` (an engine with nothing to run)."""
        futures = [w.future for w in self._waiting.values()]
        if futures:
            wait(futures, timeout=timeout_s, return_when=FIRST_COMPLETED)

    def take_rejected(self) -> list[tuple[str, str]]:
        """(request_id, message) of requests whose grammar failed since the last call."""
        rejected, self._rejected = self._rejected, []
        return rejected

    def forget(self, seqs) -> None:
        """Finished or aborted sequences: drop their grammar states."""
        for seq in seqs:
            if seq.grammar is not None:
                seq.grammar = None
                self.num_live -= 1

    def shutdown(self) -> None:
        self.compiler.shutdown()

    # ---- one step --------------------------------------------------------------------------------
    def constrains(self, out: SchedulerOutput) -> bool:
        """Whether any draw of this step has a grammar (cheap when no constrained sequence is alive)."""
        return self.num_live > 0 and any(s.samples and s.seq.grammar is not None for s in out.scheduled)

    def fill_bitmask(self, out: SchedulerOutput) -> TokenBitmask | None:
        """The mask of every constrained draw of `out`, rows numbered as the step's sampled rows. Every
        output token before each draw must have been fed to its grammar (the engine's job)."""
        started = time.perf_counter()
        rows, states = [], []
        for row, item in enumerate(s for s in out.scheduled if s.samples):
            seq = item.seq
            state = seq.grammar
            if state is None or seq.is_finished:
                continue
            position = item.start + item.num_new_tokens - seq.num_prompt_tokens  # the draw's output index
            state.catch_up(seq.output_token_ids, position)
            if state.constrains_next:
                rows.append(row)
                states.append(state)
        if not rows:
            return None
        mask = TokenBitmask.empty(len(rows), self.vocab_size, self.device)
        if len(states) >= BATCH_FILL_ROWS:
            self._batch.batch_fill_next_token_bitmask([s.matcher for s in states], mask.bits)
        else:
            for i, state in enumerate(states):
                state.fill(mask.bits, i)
        self.fill_rows += len(rows)
        self.fill_calls += 1
        self.fill_s += time.perf_counter() - started
        return TokenBitmask(rows, mask.bits)

    # ---- internals -------------------------------------------------------------------------------
    def _gate(self, seq: Sequence, params: StructuredOutputsParams) -> ReasoningGate | None:
        if params.reasoning_end is None:
            return None
        start = self._marker_ids(params.reasoning_start) if params.reasoning_start else []
        return ReasoningGate.for_prompt(seq.prompt_token_ids, start, self._marker_ids(params.reasoning_end))

    def _marker_ids(self, marker: str) -> list[int]:
        ids = self.tokenizer.encode(marker, add_special_tokens=False)
        if not ids or self.tokenizer.decode(ids) != marker:
            raise ValueError(
                f"structured_outputs: the reasoning marker {marker!r} is no token text of this model"
            )
        return ids


def _timeout_message(timeout_s: float) -> str:
    return f"structured_outputs: the constraint took longer than {timeout_s:g} s to compile (simplify it)"
