"""Bad requests raise a ValueError naming the field before they enter the loop; good ones are unharmed."""

from __future__ import annotations

import pytest

from engine_service import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(tiny_llama):
    return LLM(str(tiny_llama), device="cpu", dtype="float32", num_kv_blocks=64, max_model_len=128)


@pytest.mark.parametrize(
    "prompt, params, match",
    [
        ([], SamplingParams(), "prompt must contain at least one token"),
        ([1, 256], SamplingParams(), r"prompt token id 256 is outside the vocabulary \[0, 256\)"),
        ([1, -1], SamplingParams(), "outside the vocabulary"),
        ([1], SamplingParams(max_tokens=0), "'max_tokens' must be >= 1, got 0"),
        ([1], SamplingParams(temperature=-0.5), "'temperature' must be >= 0, got -0.5"),
        ([1], SamplingParams(temperature=float("nan")), "temperature"),
        ([1], SamplingParams(top_p=0.0), "'top_p' must be > 0, got 0"),
        ([1], SamplingParams(top_p=1.5), "top_p"),
        ([1], SamplingParams(top_k=-2), "'top_k' must be >= -1, got -2"),
        ([1], SamplingParams(n=0), "'n' must be >= 1, got 0"),
        ([1], SamplingParams(min_p=2.0), "min_p"),
        ([1], SamplingParams(presence_penalty=3.0), "presence_penalty"),
        ([1], SamplingParams(repetition_penalty=0.0), "repetition_penalty"),
        (
            [1],
            SamplingParams(logit_bias={999: 1.0}),
            r"'logit_bias' holds token id 999, outside the vocabulary \[0, 256\)",
        ),
        ([1], SamplingParams(logprobs=50), "'logprobs' must be <= 20, got 50"),
        ([1], SamplingParams(min_tokens=5, max_tokens=2), "min_tokens"),
        ([1] * 128, SamplingParams(), "prompt has 128 tokens; the limit is 127"),
        ([1] * 100, SamplingParams(max_tokens=50), r"max_tokens \(50\) exceeds the limit of 128"),
    ],
)
def test_rejected_with_the_field_named(llm, prompt, params, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(prompt_token_ids=[prompt], sampling_params=params)
    assert not llm.engine.has_unfinished()


def test_one_bad_request_does_not_harm_the_others(llm):
    good = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    before = llm.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=good)[0].outputs[0].token_ids
    engine = llm.engine
    engine.add_request("ok", [5, 6, 7], good)
    with pytest.raises(ValueError):
        engine.add_request("bad", [5, 6, 7], SamplingParams(top_p=7.0))
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("ok", [1], good)
    tokens = []
    while engine.has_unfinished():
        for update in engine.step():
            tokens += update.new_token_ids
    assert tokens == before
    engine.block_manager.check_integrity()


def test_text_prompt_without_tokenizer_is_a_clear_error(llm):
    with pytest.raises(ValueError, match="need a tokenizer"):
        llm.generate("hello")


def test_unknown_llm_argument(tiny_llama):
    with pytest.raises(TypeError, match="unknown arguments"):
        LLM(str(tiny_llama), device="cpu", blocksize=3)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"architectures": ["GPT2LMHeadModel"], "vocab_size": 10, '
        '"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}'
    )
    with pytest.raises(ValueError, match="architecture 'GPT2LMHeadModel' is not supported"):
        LLM(str(tmp_path), device="cpu")
