"""`pagoda generate --prompt TEXT`: offline generation through the LLM API (no servers); prints the text."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    p.add_argument("--num-kv-blocks", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from engine_service import LLM, SamplingParams
    from pagoda.models import resolve_model

    try:
        model = resolve_model(args.model, args.model_cache_dir)
        llm = LLM(str(model), device=args.device, dtype=args.dtype, num_kv_blocks=args.num_kv_blocks)
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            stop=args.stop,
            seed=args.seed,
        )
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
