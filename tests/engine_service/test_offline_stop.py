"""The offline LLM goes through the output processor: incremental text, stop strings, stop tokens."""

from __future__ import annotations

import pytest

from engine_service import LLM, SamplingParams
from tests.engine_service.scripted_model import SCRIPTS


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(str(tiny_model_dir), device="cpu", dtype="float32", num_kv_blocks=64, max_num_seqs=8)


def greedy(**kw) -> SamplingParams:
    return SamplingParams(temperature=0.0, **{"max_tokens": 64, **kw})


def test_scripted_model_writes_its_script(llm, scripts):
    out = llm.generate(prompt_token_ids=[scripts["emoji"][:1]], sampling_params=greedy())[0].outputs[0]
    assert out.text == SCRIPTS["emoji"][0][len("Hi") :]
    assert out.token_ids == scripts["emoji"][1:] + [2]  # EOS stays in the ids, not in the text
    assert (out.finish_reason, out.stop_reason) == ("stop", 2)


def test_stop_string_split_across_tokens(llm, scripts, tokenizer):
    # " forty" | "-" | "two": the stop string "ty-tw" starts inside one token and ends inside another.
    ids = scripts["stop"]
    params = greedy(stop=["ty-tw", "never"])
    out = llm.generate(prompt_token_ids=[ids[:1]], sampling_params=params)[0].outputs[0]
    assert out.text == " answer is for"
    assert (out.finish_reason, out.stop_reason) == ("stop", "ty-tw")
    # The tokens up to the one that completed the stop string, none after.
    assert tokenizer.decode(out.token_ids) == " answer is forty-two"


def test_include_stop_str_in_output(llm, scripts):
    params = greedy(stop=["ty-tw"], include_stop_str_in_output=True)
    out = llm.generate(prompt_token_ids=[scripts["stop"][:1]], sampling_params=params)[0].outputs[0]
    assert out.text == " answer is forty-tw"


def test_stop_ends_only_its_sample_and_frees_the_engine(llm, scripts):
    loop = scripts["loop"]
    params = [greedy(stop=["blue red"]), greedy(max_tokens=7)]
    a, b = llm.generate(prompt_token_ids=[loop[:1], loop[:1]], sampling_params=params)
    assert (a.outputs[0].text, a.outputs[0].finish_reason) == (" green ", "stop")
    assert (b.outputs[0].text, b.outputs[0].finish_reason) == (
        " green blue red green blue red green",
        "length",
    )
    assert not llm.engine.has_unfinished()
    assert llm.engine.stats().kv_cache_usage == 0.0


def test_stop_strings_need_a_tokenizer(tmp_path, tiny_model_dir):
    import shutil

    for f in tiny_model_dir.iterdir():
        if not f.name.startswith("tokenizer") and f.name != "special_tokens_map.json":
            shutil.copy(f, tmp_path / f.name)
    bare = LLM(str(tmp_path), device="cpu", dtype="float32", num_kv_blocks=8)
    out = bare.generate(prompt_token_ids=[[5, 6]], sampling_params=greedy(max_tokens=2))[0].outputs[0]
    assert out.text is None and len(out.token_ids) == 2
    with pytest.raises(ValueError, match="stop strings need the model's tokenizer"):
        bare.generate(prompt_token_ids=[[5, 6]], sampling_params=greedy(stop=["x"]))
