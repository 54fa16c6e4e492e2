"""Incremental detokenization with the default model's tokenizer (byte-level BPE, which splits
emoji and CJK characters across tokens)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine_service.engine.detokenizer import REPLACEMENT_CHAR, IncrementalDetokenizer, PieceTexts

MIXED = "Hello 👋🏽 world! 日本語のテキスト and 中文 ✨ done."


@pytest.fixture(scope="module")
def tokenizer(default_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream(detok: IncrementalDetokenizer, ids: list[int], per_step: int = 1) -> list[str]:
    deltas = []
    for i in range(0, len(ids), per_step):
        chunk = ids[i : i + per_step]
        delta = detok.update(chunk, finished=i + per_step >= len(ids))
        deltas.append(delta.text)
        if delta.finished:
            break
    return deltas


def test_multibyte_characters_split_across_tokens_never_show_replacement_chars(tokenizer):
    ids = encode(tokenizer, MIXED)
    # The test means something only if some characters really are split across tokens.
    assert any(REPLACEMENT_CHAR in tokenizer.decode([i]) for i in ids)
    detok = IncrementalDetokenizer(tokenizer)
    deltas = stream(detok, ids)
    assert not any(REPLACEMENT_CHAR in d for d in deltas)
    assert "".join(deltas) == detok.text == tokenizer.decode(ids) == MIXED


@pytest.mark.parametrize("per_step", [2, 3, 7])
def test_several_tokens_per_step_give_the_same_text(tokenizer, per_step):
    prompt = encode(tokenizer, "Say something ✨ in Japanese:")
    ids = encode(tokenizer, MIXED)
    deltas = stream(IncrementalDetokenizer(tokenizer, prompt), ids, per_step)
    assert "".join(deltas) == MIXED
    assert not any(REPLACEMENT_CHAR in d for d in deltas)


def test_text_is_sent_as_soon_as_a_character_completes(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    ids = encode(tokenizer, "a 中文 b")
    out = [detok.update([i]).text for i in ids]
    assert "".join(out) == "a 中文 b"
    assert out[0] == "a"  # no stop strings: nothing is held back


def test_skip_special_tokens(tokenizer):
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    ids = [im_start] + encode(tokenizer, "assistant\nHi there") + [im_end]
    assert "".join(stream(IncrementalDetokenizer(tokenizer), ids)) == "assistant\nHi there"
    kept = "".join(stream(IncrementalDetokenizer(tokenizer, skip_special_tokens=False), ids))
    assert kept == "<|im_start|>assistant\nHi there<|im_end|>"


def test_the_stop_token_is_left_out_of_the_text(tokenizer):
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = encode(tokenizer, "Hi there") + [im_end]
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=False)
    delta = detok.update(ids, finished=True, stop_token_ended=True)
    assert (delta.text, delta.num_token_ids, delta.finished) == ("Hi there", len(ids), True)
    detok = IncrementalDetokenizer(tokenizer, skip_special_tokens=False, include_stop_str_in_output=True)
    assert detok.update(ids, finished=True, stop_token_ended=True).text == "Hi there<|im_end|>"


def test_a_stop_string_split_across_tokens_ends_the_text(tokenizer):
    ids = encode(tokenizer, "The end is near. STOP now, please.")
    assert " ST" in [tokenizer.decode([i]) for i in ids]  # "STOP" spans two tokens
    detok = IncrementalDetokenizer(tokenizer, stop=["STOP"])
    deltas = []
    for token_id in ids:
        delta = detok.update([token_id])
        deltas.append(delta.text)
        if delta.finished:
            break
    assert (delta.stop_str, delta.finished, delta.num_token_ids) == ("STOP", True, 1)
    assert tokenizer.decode(ids[: len(deltas)]).endswith("STOP")  # it ended on the token that completed it
    assert "".join(deltas) == detok.text == "The end is near. "
    assert detok.update(encode(tokenizer, " more")) == type(delta)("", 0, "STOP", True)


def test_include_stop_str_in_output(tokenizer):
    ids = encode(tokenizer, "The end is near. STOP now, please.")
    detok = IncrementalDetokenizer(tokenizer, stop=["STOP"], include_stop_str_in_output=True)
    assert "".join(stream(detok, ids)) == "The end is near. STOP"


def test_a_stop_string_inside_one_step_reports_the_tokens_before_it(tokenizer):
    ids = encode(tokenizer, "one two three four five")
    detok = IncrementalDetokenizer(tokenizer, stop=[" three", "four"])
    delta = detok.update(ids)
    assert (delta.text, delta.stop_str) == ("one two", " three")
    assert delta.num_token_ids == 3 and tokenizer.decode(ids[:3]) == "one two three"


def test_text_is_held_back_only_while_it_could_begin_a_stop_string(tokenizer):
    ids = encode(tokenizer, "The end is near. STAY here.")
    assert [tokenizer.decode([i]) for i in ids][5:7] == [" ST", "AY"]
    detok = IncrementalDetokenizer(tokenizer, stop=["STOP", "nearby"])
    out = [detok.update([i]).text for i in ids]
    assert out[3] == " "  # "near" could begin "nearby"
    assert out[4] == "near."  # "." rules it out
    assert out[5] == " "  # "ST" could begin "STOP"
    assert out[6] == "STAY"
    assert "".join(out) == "The end is near. STAY here."


def test_held_back_text_is_flushed_when_the_sequence_ends(tokenizer):
    ids = encode(tokenizer, "Wait for the ST")
    detok = IncrementalDetokenizer(tokenizer, stop=["STOP"])
    assert detok.update(ids).text == "Wait for the "
    delta = detok.update([], finished=True)
    assert (delta.text, delta.stop_str, delta.finished) == ("ST", None, True)
    assert detok.text == "Wait for the ST"


def test_stop_strings_wait_for_min_tokens(tokenizer):
    ids = encode(tokenizer, "a STOP b STOP c")
    detok = IncrementalDetokenizer(tokenizer, stop=["STOP"], min_tokens=3)
    assert "".join(stream(detok, ids)) == "a STOP b "


def test_an_incomplete_character_at_the_end_is_flushed(tokenizer):
    ids = encode(tokenizer, "x 日")[:-1]  # drop the token that completes the character
    detok = IncrementalDetokenizer(tokenizer)
    assert detok.update(ids).text == "x"
    assert detok.update([], finished=True).text == tokenizer.decode(ids)[1:]


def test_each_step_decodes_a_short_window(tokenizer):
    """O(new tokens) per step: the decoded windows stay short however long the text gets."""
    windows: list[int] = []
    backend = tokenizer.backend_tokenizer

    class CountingTokenizer:
        class backend_tokenizer:
            @staticmethod
            def decode(ids, skip_special_tokens):
                windows.append(len(ids))
                return backend.decode(ids, skip_special_tokens=skip_special_tokens)

    ids = encode(tokenizer, MIXED * 50)
    prompt = encode(tokenizer, "a long prompt " * 100)
    detok = IncrementalDetokenizer(CountingTokenizer, prompt, stop=["never matches"])
    assert "".join(stream(detok, ids)) == MIXED * 50
    assert len(ids) > 1000 and max(windows) <= 12


class WindowOnly:
    """The same tokenizer seen without its Rust backend: the window diffing alone, the reference."""

    backend_tokenizer = None

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def decode(self, ids, skip_special_tokens):
        return self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.mark.parametrize("skip", [True, False])
def test_per_token_texts_give_what_the_window_gives(tokenizer, skip):
    """Random ids over the whole vocabulary (byte tokens that split characters, special tokens), one or
    several a step: the byte-level fast path (each token's own text, cached) and the window agree."""
    assert PieceTexts.of(tokenizer, skip) is not None  # the fast path is on for this one
    rng = random.Random(0)
    vocab = len(tokenizer)
    for trial in range(60):
        low = trial % 3 == 0  # mostly byte tokens: characters split across tokens all the time
        ids = [rng.randrange(300 if low else vocab) for _ in range(40)]
        prompt = encode(tokenizer, "Some prompt:")
        per_step = 1 + trial % 4
        fast = IncrementalDetokenizer(tokenizer, prompt, skip_special_tokens=skip)
        window = IncrementalDetokenizer(WindowOnly(tokenizer), prompt, skip_special_tokens=skip)
        assert stream(fast, ids, per_step) == stream(window, ids, per_step)
        assert fast.text == tokenizer.decode(ids, skip_special_tokens=skip)


def test_per_token_texts_only_for_a_byte_level_decoder(tokenizer):
    from tokenizers import decoders

    assert PieceTexts.of(WindowOnly(tokenizer), True) is None
    backend = tokenizer.backend_tokenizer
    assert PieceTexts.of(tokenizer, True) is PieceTexts.of(tokenizer, True)  # one table per tokenizer
    saved = backend.decoder
    backend.decoder = decoders.Metaspace()  # SentencePiece's: a token's text depends on its place
    try:
        assert PieceTexts.of(tokenizer, True) is None
    finally:
        backend.decoder = saved


def test_the_module_does_not_import_torch():
    path = Path(__file__).resolve().parents[2] / "engine_service" / "engine" / "detokenizer.py"
    code = f"""
import importlib.util, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoTorch())
spec = importlib.util.spec_from_file_location("detokenizer", {str(path)!r})
module = importlib.util.module_from_spec(spec)
sys.modules["detokenizer"] = module
spec.loader.exec_module(module)
"""
    subprocess.run([sys.executable, "-c", code], check=True)
