"""`pagoda generate --prompt TEXT`: offline generation through the LLM API (no servers); prints the text.

Its sampling and engine flags are made from SamplingParams' and EngineConfig's fields (pagoda/cli_args.py).
"""

from __future__ import annotations

import argparse
import sys

from engine_service.core.config import EngineConfig
from engine_service.core.sampling_params import SamplingParams
from pagoda.cli_args import add_config_args, config_values

SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "top_k", "stop", "seed")
ENGINE_FLAGS = ("device", "dtype", "num_kv_blocks")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pagoda generate", description="Generate offline from a prompt.")
    p.add_argument(
        "--model", default=None, help="a Hugging Face model folder or a .gguf file (default: SmolLM2-135M)"
    )
    p.add_argument("--model-cache-dir", default=None, help="where .gguf models are converted")
    p.add_argument("--prompt", required=True, action="append", help="the prompt (repeat for a batch)")
    p.add_argument(
        "--chat", action="store_true", help="wrap the prompt in the model's chat template as a user turn"
    )
    # a short greedy answer by default
    add_config_args(p, SamplingParams, only=SAMPLING_FLAGS, defaults={"max_tokens": 64, "temperature": 0.0})
    add_config_args(p, EngineConfig, only=ENGINE_FLAGS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from engine_service import LLM
    from pagoda.models import resolve_model

    try:
        model = resolve_model(args.model, args.model_cache_dir)
        llm = LLM(str(model), **config_values(args, EngineConfig, only=ENGINE_FLAGS))
        params = SamplingParams(**config_values(args, SamplingParams, only=SAMPLING_FLAGS))
        if args.chat:
            if llm.tokenizer is None or not getattr(llm.tokenizer, "chat_template", None):
                raise ValueError("--chat needs a tokenizer with a chat template, and the model has none")
            ids = [
                llm.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=False,
                )
                for p in args.prompt
            ]
            outputs = llm.generate(prompt_token_ids=ids, sampling_params=params)
        else:
            outputs = llm.generate(args.prompt, params)
    except (ValueError, FileNotFoundError) as e:
        print(f"pagoda generate: {e}", file=sys.stderr)
        return 2
    for out in outputs:
        print(out.outputs[0].text)
    return 0
