"""Incremental detokenization: new token ids in, new text out, with stop strings.

Decoding each token alone is wrong (a multi-byte character split across tokens decodes to U+FFFD;
SentencePiece drops a token's leading space when it starts the text), and decoding everything
each step is O(total). So, as in vLLM and TGI, we decode a short window of recent ids and diff:

    ids:  [ ... prompt tail ... | out0  out1  out2  out3 ]
              ^prefix_offset          ^read_offset    ^len(ids)
    decode(ids[prefix:read]) is text already accounted for; decode(ids[prefix:]) minus it is new.

When the new text ends in U+FFFD the window is left to grow until the character completes. The
window only spans the tokens since the last clean decode, so a step costs O(new tokens).

The gRPC front detokenizes every token of every stream, so this is its largest per-token cost. For a
byte-level BPE tokenizer (GPT-2's decoder alone: Llama 3, Qwen, SmolLM...) the text of a sequence is the
UTF-8 decoding of its tokens' bytes joined, so after clean text a token whose bytes are a complete
character sequence adds exactly its own text: each token's text is decoded once per process
(`PieceTexts`) and reused, without a decode call. Incomplete characters, other decoders (SentencePiece
drops a leading space at the start, so context matters) and everything after an incomplete character
take the window above.

Stop strings: text that is decoded but not yet sent ("pending") is kept only while its tail could
still begin a stop string, so a stop string can never start inside text already sent, and
searching `pending` alone finds every match, however the stop string is split across tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

REPLACEMENT_CHAR = "\ufffd"
# Prompt tokens decoded before the output, for decoders whose output depends on the previous token.
PROMPT_CONTEXT_TOKENS = 5


@dataclass(frozen=True, slots=True)
class Delta:
    """What one `update` produced."""

    text: str  # new text to send
    num_token_ids: int  # how many of the given ids belong to the output (fewer only after a stop string)
    stop_str: str | None = None  # the stop string that ended the sequence, if one did
    finished: bool = False  # no more text will come (a stop string matched, or the sequence ended)


class IncrementalDetokenizer:
    """Turns one sequence's output token ids into text, step by step. Not thread-safe."""

    def __init__(
        self,
        tokenizer,
        prompt_token_ids: Sequence[int] = (),
        *,
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        min_tokens: int = 0,
    ) -> None:
        self._decode = _decode_fn(tokenizer, skip_special_tokens)
        self._pieces = PieceTexts.of(tokenizer, skip_special_tokens)  # None: no byte-level decoder
        self._stop = tuple(s for s in stop if s)
        self._include_stop = include_stop_str_in_output
        self._min_tokens = min_tokens
        self._ids: list[int] = list(prompt_token_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        self._pending = ""  # decoded, not yet sent: could still begin a stop string
        self._sent: list[str] = []
        self.num_output_tokens = 0
        self.stop_str: str | None = None
        self.finished = False

    @property
    def text(self) -> str:
        """All text sent so far (the final text once finished)."""
        return "".join(self._sent)

    def update(
        self, new_token_ids: Sequence[int], *, finished: bool = False, stop_token_ended: bool = False
    ) -> Delta:
        """Feeds the ids a step produced and returns the text that may be sent now.

        finished: the engine ended the sequence (EOS, a stop token, max_tokens, abort); held-back text
            is flushed. stop_token_ended: the last id is the stop token that ended it; like the EOS
            token it is not part of the text unless include_stop_str_in_output.
        """
        if self.finished:
            return Delta("", 0, self.stop_str, True)
        if not self._stop and not finished and len(new_token_ids) == 1:  # a decode step: the hot path
            self._ids.append(new_token_ids[0])
            self.num_output_tokens += 1
            text = self._decode_new()
            if text:
                self._sent.append(text)
            return Delta(text, 1)
        ids = list(new_token_ids)
        if stop_token_ended and ids and not self._include_stop:
            ids = ids[:-1]
        before = len(self._sent)
        for i, token_id in enumerate(ids):
            self._ids.append(token_id)
            self.num_output_tokens += 1
            if self._accept(self._decode_new()):
                return Delta(self._sent_since(before), i + 1, self.stop_str, True)
        if finished:
            self._accept(self._decode_new(flush=True), flush=True)
            self.finished = True
        return Delta(self._sent_since(before), len(new_token_ids), self.stop_str, self.finished)

    def _decode_new(self, flush: bool = False) -> str:
        """The text the ids since read_offset add; "" while it ends in an incomplete character."""
        n = len(self._ids)
        if self._read_offset == n:
            return ""
        if self._read_offset == n - 1 and self._pieces is not None:  # one new token after clean text
            text = self._pieces.text(self._ids[-1])
            if text is not None:  # what the window would find: prefix = that token, its text
                self._prefix_offset, self._read_offset, self._prefix_text = n - 1, n, text
                return text
        text = self._decode(self._ids[self._prefix_offset :])
        if len(text) <= len(self._prefix_text) or (text.endswith(REPLACEMENT_CHAR) and not flush):
            return ""
        new = text[len(self._prefix_text) :]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        return new

    def _accept(self, new_text: str, flush: bool = False) -> bool:
        """Adds decoded text; sends what can no longer be part of a stop string. True on a stop match."""
        pending = self._pending + new_text
        if self._stop and self.num_output_tokens >= self._min_tokens:
            match = _first_match(pending, self._stop)
            if match is not None:
                start, stop_str = match
                end = start + len(stop_str) if self._include_stop else start
                self._send(pending[:end])
                self._pending = ""
                self.stop_str, self.finished = stop_str, True
                return True
            keep = 0 if flush else _longest_stop_prefix_suffix(pending, self._stop)
        else:
            keep = 0  # stop strings do not count yet: send everything
        self._send(pending[: len(pending) - keep])
        self._pending = pending[len(pending) - keep :]
        return False

    def _send(self, text: str) -> None:
        if text:
            self._sent.append(text)

    def _sent_since(self, index: int) -> str:
        return "".join(self._sent[index:])


def _first_match(text: str, stops: tuple[str, ...]) -> tuple[int, str] | None:
    """The earliest stop string in text (the first listed one on a tie)."""
    best: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (best is None or i < best[0]):
            best = (i, s)
    return best


def _longest_stop_prefix_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is a proper beginning of some stop string."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:k]):
                longest = k
                break
    return longest


class PieceTexts:
    """Each token's own text, decoded once per process, for a tokenizer whose decoder is byte-level BPE
    alone. `text(id)` is None for a token whose bytes are not complete UTF-8 (part of a character)."""

    _cache: dict[tuple[int, bool], tuple[object, PieceTexts]] = {}  # (id(backend), skip) -> the table

    def __init__(self, decode: Callable[[list[int]], str]):
        self._decode = decode
        self._texts: dict[int, str | None] = {}

    @classmethod
    def of(cls, tokenizer, skip_special_tokens: bool) -> PieceTexts | None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        try:
            from tokenizers import Tokenizer, decoders
        except ImportError:
            return None
        if not isinstance(backend, Tokenizer) or type(backend.decoder) is not decoders.ByteLevel:
            return None
        key = (id(backend), skip_special_tokens)
        held = cls._cache.get(key)
        if held is None or held[0] is not backend:  # (the backend is held: its id stays its own)
            held = cls._cache[key] = (backend, cls(_decode_fn(tokenizer, skip_special_tokens)))
        return held[1]

    def text(self, token_id: int) -> str | None:
        try:
            return self._texts[token_id]
        except KeyError:
            text = self._decode([token_id])
            text = self._texts[token_id] = None if REPLACEMENT_CHAR in text else text
            return text


def _decode_fn(tokenizer, skip_special_tokens: bool) -> Callable[[list[int]], str]:
    # Fast tokenizers: call the Rust decoder directly, skipping transformers' per-call overhead.
    # (Its clean_up_tokenization_spaces is a WordPiece-era cleanup that LLM tokenizers turn off.)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return lambda ids: backend.decode(ids, skip_special_tokens=skip_special_tokens)
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
