"""Fill-in-the-middle prompts for completions' `suffix`: the model's own FIM tokens around the prefix and
the suffix (PSM order, as StarCoder, Qwen2.5-Coder and DeepSeek-Coder were trained), so that the model
writes the middle. A model whose tokenizer has no FIM tokens gets a 400: a suffix it cannot see would be
silently ignored."""

from __future__ import annotations

from router.errors import bad_request
from router.upstream.tokenizer import TokenizerClient


async def fim_prompt(tokenizer: TokenizerClient, prefix: str, suffix: str) -> str:
    """The prompt text; its FIM tokens are added tokens, so the tokenizer encodes each to its one id."""
    fim = (await tokenizer.info()).fim
    if not fim.prefix:
        raise bad_request(
            "'suffix' needs a model with fill-in-the-middle tokens, and this model's tokenizer has none.",
            "suffix",
        )
    return f"{fim.prefix}{prefix}{fim.suffix}{suffix}{fim.middle}"
