"""One model's tokenizer: encode text or chat messages, decode ids, describe the vocabulary.

Plain synchronous code over a Hugging Face tokenizer (no torch needed); the pool runs it off the
event loop. Bad input raises `InvalidInput` naming the request field at fault.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from pagoda.prompt_bound import max_bytes_per_token, refuses

# transformers' "no limit" sentinel for model_max_length is about 1e30; anything past 2^32 is that.
_NO_LIMIT = 2**32

# Fill-in-the-middle token sets (prefix, suffix, middle) of the model families that have them, in PSM
# order: StarCoder / SantaCoder, Qwen2.5-Coder, DeepSeek-Coder. Each is an added token, so its text
# encodes to it wherever it stands. (CodeLlama's ▁<PRE>-style tokens need spacing rules of their own.)
FIM_FAMILIES = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ("<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"),
)


class InvalidInput(ValueError):
    """The request is wrong; the message starts with the field at fault."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


class TooLong(InvalidInput):
    """The input encodes to more tokens than the caller (or the service) takes (gRPC OUT_OF_RANGE)."""

    def __init__(self, field_name: str, max_tokens: int, num_tokens: int | None = None):
        found = f"{num_tokens} tokens" if num_tokens is not None else "more, judged from its length in bytes"
        super().__init__(field_name, f"the input is longer than {max_tokens} tokens ({found})")
        self.max_tokens = max_tokens


class NoChatTemplate(RuntimeError):
    """Chat input for a model that has no chat template, and the request brings none."""


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None  # None: the model's own


@dataclass(frozen=True)
class Encoded:
    token_ids: list[int]
    prompt_text: str = ""  # the rendered chat, for chat input


@dataclass(frozen=True)
class TokenizerInfo:
    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: list[int]
    special_tokens: list[str]
    has_chat_template: bool
    model_max_length: int  # 0 when unknown
    model_name: str
    fim_tokens: tuple[str, str, str] | None = None  # (prefix, suffix, middle); None: no full set


def load_hf_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


class ModelTokenizer:
    """Wraps one Hugging Face tokenizer. Not thread-safe: the pool gives each thread its own."""

    def __init__(self, hf_tokenizer) -> None:
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        # Template variables a request may set; the other apply_chat_template parameters are
        # controlled by the request's own fields (or must stay as they are, like `tokenize`).
        params = set(inspect.signature(hf_tokenizer.apply_chat_template).parameters)
        self._reserved_kwargs = params - {"tools", "documents", "kwargs"}
        # The most input bytes one token covers (pagoda/prompt_bound.py); None: no honest bound.
        self.bytes_per_token = max_bytes_per_token(hf_tokenizer)

    @property
    def has_chat_template(self) -> bool:
        return bool(self.hf.chat_template)

    def encode_text(
        self, text: str, add_special_tokens: bool = True, max_tokens: int | None = None, field: str = "text"
    ) -> Encoded:
        """`max_tokens`: a longer input raises TooLong, from its byte length when that already says so."""
        if max_tokens is not None and refuses(text, max_tokens, self.bytes_per_token):
            raise TooLong(field, max_tokens)
        ids = self.hf.encode(text, add_special_tokens=add_special_tokens)
        if max_tokens is not None and len(ids) > max_tokens:
            raise TooLong(field, max_tokens, len(ids))
        return Encoded(ids)

    def encode_chat(
        self, chat: ChatRequest, add_special_tokens: bool = False, max_tokens: int | None = None
    ) -> Encoded:
        return self.encode_rendered(self.render_chat(chat), add_special_tokens, max_tokens)

    def encode_rendered(self, prompt: str, add_special_tokens: bool, max_tokens: int | None) -> Encoded:
        """A chat rendered already (by the model's template, or a request's in the sandbox)."""
        encoded = self.encode_text(prompt, add_special_tokens, max_tokens, field="chat.messages")
        return Encoded(encoded.token_ids, prompt)

    def check_chat(self, chat: ChatRequest) -> None:
        """What every chat must pass before it renders, with either template."""
        if chat.chat_template is None and not self.has_chat_template:
            raise NoChatTemplate(
                "this model has no chat template: send plain text, or a template in chat.chat_template"
            )
        reserved = sorted(self._reserved_kwargs & set(chat.template_kwargs))
        if reserved:
            raise InvalidInput(
                "chat.chat_template_kwargs_json", f"{', '.join(reserved)} cannot be set as template variables"
            )

    def render_chat(self, chat: ChatRequest) -> str:
        """Renders with the model's own template (in this process) or, in tests and offline use, a given one;
        the service renders a request's own template in the sandbox instead (template_sandbox.py)."""
        self.check_chat(chat)
        field_name = "chat.messages" if chat.chat_template is None else "chat.chat_template"
        try:
            return self.hf.apply_chat_template(
                chat.messages,
                chat_template=chat.chat_template,
                add_generation_prompt=chat.add_generation_prompt,
                continue_final_message=chat.continue_final_message,
                tokenize=False,
                **chat.template_kwargs,
            )
        except jinja2.TemplateSyntaxError as e:
            raise InvalidInput("chat.chat_template", f"not a valid Jinja template: {e}") from e
        except (
            jinja2.TemplateError,
            ArithmeticError,
            LookupError,
            ValueError,
            TypeError,
            AttributeError,
        ) as e:
            # Templates reject conversations they do not support with raise_exception(...); the variables
            # a request sets (chat_template_kwargs) can make any expression fail.
            raise InvalidInput(field_name, f"the chat template failed to render: {e}") from e

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        for i, token_id in enumerate(token_ids):
            if token_id >= self.vocab_size:
                raise InvalidInput(
                    f"token_ids[{i}]", f"{token_id} is outside the vocabulary [0, {self.vocab_size})"
                )
        return self.hf.decode(token_ids, skip_special_tokens=skip_special_tokens)

    def context_length(self, model_dir: Path) -> int:
        """The longest input the model takes, as generously as its files say (0: unknown): the larger of
        the tokenizer's model_max_length and config.json's max_position_embeddings."""
        config = _read_json(model_dir / "config.json")
        own = (
            self.hf.model_max_length
            if self.hf.model_max_length and self.hf.model_max_length < _NO_LIMIT
            else 0
        )
        return max(int(own), int(config.get("max_position_embeddings") or 0))

    def describe(self, model_dir: Path, model_name: str) -> TokenizerInfo:
        config = _read_json(model_dir / "config.json")
        generation = _read_json(model_dir / "generation_config.json")
        eos = _ids(self.hf.eos_token_id) + _ids(generation.get("eos_token_id", config.get("eos_token_id")))
        max_len = self.hf.model_max_length
        if not max_len or max_len >= _NO_LIMIT:
            max_len = config.get("max_position_embeddings") or 0
        return TokenizerInfo(
            vocab_size=self.vocab_size,
            bos_token_id=self.hf.bos_token_id,
            eos_token_ids=list(dict.fromkeys(eos)),
            special_tokens=list(self.hf.all_special_tokens),
            has_chat_template=self.has_chat_template,
            model_max_length=int(max_len),
            model_name=model_name,
            fim_tokens=self.fim_tokens(),
        )

    def fim_tokens(self) -> tuple[str, str, str] | None:
        """The first family of FIM_FAMILIES whose three tokens are all in the vocabulary."""
        vocab = self.hf.get_vocab()
        return next((family for family in FIM_FAMILIES if all(t in vocab for t in family)), None)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _ids(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]
