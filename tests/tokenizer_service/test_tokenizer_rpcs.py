"""Encode, Decode and Info against a real server, compared with transformers itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from pagoda.tokenizer.v1 import tokenizer_pb2 as pb
from pagoda.tokenizer.v1 import tokenizer_pb2_grpc

MIXED = "Hello 👋🏽 world! 日本語のテキスト and 中文 ✨ <b>done</b>."
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system and turns": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": MIXED},
    ],
}


def chat(messages: list[dict], **fields) -> pb.ChatInput:
    return pb.ChatInput(messages=[pb.ChatMessage(**m) for m in messages], **fields)


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_ids_equal_apply_chat_template(stub, hf_tokenizer, name, add_generation_prompt):
    messages = CONVERSATIONS[name]
    response = stub.Encode(pb.EncodeRequest(chat=chat(messages, add_generation_prompt=add_generation_prompt)))
    expected = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)[
        "input_ids"
    ]
    assert list(response.token_ids) == expected
    assert response.num_tokens == len(expected)
    assert response.prompt_text == hf_tokenizer.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )


def test_add_generation_prompt_defaults_to_true(stub, hf_tokenizer):
    messages = CONVERSATIONS["one user turn"]
    response = stub.Encode(pb.EncodeRequest(chat=chat(messages)))
    assert response.prompt_text.endswith("<|im_start|>assistant\n")
    assert (
        list(response.token_ids)
        == hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    )


def test_continue_final_message_leaves_the_answer_open(stub, hf_tokenizer):
    messages = CONVERSATIONS["one user turn"] + [{"role": "assistant", "content": "The capital is"}]
    response = stub.Encode(pb.EncodeRequest(chat=chat(messages, continue_final_message=True)))
    assert response.prompt_text.endswith("<|im_start|>assistant\nThe capital is")
    expected = hf_tokenizer.apply_chat_template(messages, continue_final_message=True)["input_ids"]
    assert list(response.token_ids) == expected


def test_template_override_with_kwargs_and_names(stub, hf_tokenizer):
    template = "{{ greeting }}|{% for m in messages %}"
    template += "{{ m.role }}({{ m.name or '-' }}): {{ m.content }}\n{% endfor %}"
    messages = [{"role": "user", "content": "hi", "name": "ann"}, {"role": "assistant", "content": "hello"}]
    request = pb.EncodeRequest(
        chat=chat(messages, chat_template=template, chat_template_kwargs_json=json.dumps({"greeting": "HEY"}))
    )
    response = stub.Encode(request)
    assert response.prompt_text == "HEY|user(ann): hi\nassistant(-): hello\n"
    assert list(response.token_ids) == hf_tokenizer.encode(response.prompt_text, add_special_tokens=False)


def test_chat_with_special_tokens_on_request(stub, hf_tokenizer):
    # SmolLM2 adds no BOS itself, so the ids are the same either way; the flag must still be accepted.
    messages = CONVERSATIONS["one user turn"]
    plain = stub.Encode(pb.EncodeRequest(chat=chat(messages)))
    with_special = stub.Encode(pb.EncodeRequest(chat=chat(messages), add_special_tokens=True))
    assert list(with_special.token_ids) == hf_tokenizer.encode(plain.prompt_text, add_special_tokens=True)


def test_text_encode_decode_round_trip(stub, hf_tokenizer):
    encoded = stub.Encode(pb.EncodeRequest(text=MIXED))
    assert list(encoded.token_ids) == hf_tokenizer.encode(MIXED)
    assert encoded.num_tokens == len(encoded.token_ids) and encoded.prompt_text == ""
    assert stub.Decode(pb.DecodeRequest(token_ids=encoded.token_ids)).text == MIXED


def test_decode_skips_special_tokens_unless_asked(stub, hf_tokenizer):
    ids = hf_tokenizer.apply_chat_template(CONVERSATIONS["one user turn"])["input_ids"]
    skipped = stub.Decode(pb.DecodeRequest(token_ids=ids)).text
    kept = stub.Decode(pb.DecodeRequest(token_ids=ids, skip_special_tokens=False)).text
    assert "<|im_start|>" not in skipped and "What is the capital of France?" in skipped
    assert kept == hf_tokenizer.decode(ids) and kept.startswith("<|im_start|>system")


def test_info(stub, default_model_dir: Path):
    info = stub.Info(pb.InfoRequest())
    assert info.vocab_size == 49152
    assert info.HasField("bos_token_id") and info.bos_token_id == 1
    assert list(info.eos_token_ids) == [2]
    assert {"<|im_start|>", "<|im_end|>", "<|endoftext|>"} <= set(info.special_tokens)
    assert info.has_chat_template is True
    assert info.model_max_length == 8192
    assert info.model_name == default_model_dir.name


BAD_REQUESTS = {
    "no input": (pb.EncodeRequest(), "input"),
    "no messages": (pb.EncodeRequest(chat=pb.ChatInput()), "chat.messages"),
    "empty role": (pb.EncodeRequest(chat=chat([{"role": "", "content": "x"}])), "chat.messages[0].role"),
    "kwargs not JSON": (
        pb.EncodeRequest(chat=chat(CONVERSATIONS["one user turn"], chat_template_kwargs_json="{oops")),
        "chat.chat_template_kwargs_json",
    ),
    "kwargs not an object": (
        pb.EncodeRequest(chat=chat(CONVERSATIONS["one user turn"], chat_template_kwargs_json="[1, 2]")),
        "chat.chat_template_kwargs_json",
    ),
    "kwargs set a reserved name": (
        pb.EncodeRequest(
            chat=chat(CONVERSATIONS["one user turn"], chat_template_kwargs_json='{"tokenize": true}')
        ),
        "chat.chat_template_kwargs_json",
    ),
    "generation prompt and continue": (
        pb.EncodeRequest(
            chat=chat(CONVERSATIONS["one user turn"], add_generation_prompt=True, continue_final_message=True)
        ),
        "chat.add_generation_prompt",
    ),
    "template syntax error": (
        pb.EncodeRequest(chat=chat(CONVERSATIONS["one user turn"], chat_template="{% for m in %}")),
        "chat.chat_template",
    ),
    "template raises": (
        pb.EncodeRequest(
            chat=chat(CONVERSATIONS["one user turn"], chat_template="{{ raise_exception('no users here') }}")
        ),
        "chat.chat_template",
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_bad_encode_requests_name_the_field(stub, case):
    request, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as error:
        stub.Encode(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")


def test_template_errors_carry_the_templates_message(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Encode(BAD_REQUESTS["template raises"][0])
    assert "no users here" in error.value.details()


def test_decode_rejects_ids_outside_the_vocabulary(stub):
    with pytest.raises(grpc.RpcError) as error:
        stub.Decode(pb.DecodeRequest(token_ids=[1, 49152, 3]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details() == "token_ids[1]: 49152 is outside the vocabulary [0, 49152)"


@pytest.fixture(scope="module")
def model_without_template(default_model_dir: Path, hf_tokenizer, tmp_path_factory) -> Path:
    """The SmolLM2 tokenizer saved without its chat template, with the model's config."""
    path = tmp_path_factory.mktemp("no-template")
    hf_tokenizer.save_pretrained(path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    shutil.copy(default_model_dir / "config.json", path / "config.json")
    return path


def test_chat_without_a_template_is_a_failed_precondition(
    make_tokenizer_server, model_without_template: Path
):
    with (
        make_tokenizer_server(model_without_template, workers=1, trust_request_chat_template=True) as server,
        server.channel() as channel,
    ):
        stub = tokenizer_pb2_grpc.TokenizerServiceStub(channel)
        assert stub.Info(pb.InfoRequest()).has_chat_template is False
        with pytest.raises(grpc.RpcError) as error:
            stub.Encode(pb.EncodeRequest(chat=chat(CONVERSATIONS["one user turn"])))
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no chat template" in error.value.details()
        # Plain text still works, and so does a template brought by the request.
        assert stub.Encode(pb.EncodeRequest(text="hi")).num_tokens == 1
        override = chat(CONVERSATIONS["one user turn"], chat_template="{{ messages[0].content }}")
        assert stub.Encode(pb.EncodeRequest(chat=override)).prompt_text == "What is the capital of France?"
