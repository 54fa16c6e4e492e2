"""Two models of different vocabularies behind one router, each tokenized by its own tokenizer service:
real processes on loopback (two `pagoda tokenizer`, two `pagoda engine`, one `pagoda router` with
`--tokenizer MODEL=HOST:PORT` for each), driven by the openai SDK.

Model A is a tiny random Llama with SmolLM2's tokenizer (49,152 ids); model B one with a byte-level BPE
of 320 ids trained here. Tokenizing B's prompt with A's tokenizer would give ids far outside B's
vocabulary (the engine refuses them), and the other way round the wrong ids: so each request's token
ids and its text are checked against its own model's tokenizer.
"""

from __future__ import annotations

import json
import shutil
import urllib.request

import openai
import pytest
from router_processes import Process, engine_ready, free_port, http_json, wait_until

A, B = "model-a", "model-b"
B_VOCAB = 320
MSGS = [{"role": "user", "content": "Which tokenizer reads this sentence?"}]


def _byte_bpe_model(folder, default_model_dir) -> None:
    """A tiny Llama whose tokenizer is a byte-level BPE of B_VOCAB ids, trained on a few sentences."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=B_VOCAB,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = (default_model_dir / "chat_template.jinja").read_text().splitlines() + [
        "Which tokenizer reads this sentence? The small one, trained here on a few lines of text."
    ] * 8
    bpe.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    tokenizer.model_max_length = 512
    tokenizer.save_pretrained(folder)
    assert len(tokenizer) == B_VOCAB
    config = LlamaConfig(
        vocab_size=B_VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(1)
    LlamaForCausalLM(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def model_dirs(tiny_chat_model_dir, default_model_dir, tmp_path_factory):
    b = tmp_path_factory.mktemp("model-b")
    _byte_bpe_model(b, default_model_dir)
    return {A: tiny_chat_model_dir, B: b}


class TwoModels:
    def __init__(self, dirs, log_dir):
        self.router_port = free_port()
        self.tokenizer_ports = {m: free_port() for m in dirs}
        self.engine_ports = {m: free_port() for m in dirs}
        self.processes: list[Process] = []
        for model, folder in dirs.items():
            self.processes.append(
                Process(
                    ["tokenizer", "--model", str(folder), "--host", "127.0.0.1",
                     "--port", str(self.tokenizer_ports[model]), "--metrics-port", "0", "--workers", "1"],
                    log_dir,
                    f"tokenizer-{model}",
                )
            )  # fmt: skip
            self.processes.append(
                Process(
                    ["engine", "--model", str(folder), "--served-model-name", model, "--device", "cpu",
                     "--dtype", "float32", "--host", "127.0.0.1", "--port", str(self.engine_ports[model]),
                     "--metrics-port", "0", "--max-model-len", "256", "--num-kv-blocks", "64",
                     "--max-num-seqs", "8", "--engine-core", "thread"],
                    log_dir,
                    f"engine-{model}",
                )
            )  # fmt: skip
        flags = []
        for model in dirs:
            flags += ["--tokenizer", f"{model}=127.0.0.1:{self.tokenizer_ports[model]}"]
            flags += ["--engine", f"127.0.0.1:{self.engine_ports[model]}"]
        self.router = Process(
            ["router", "--host", "127.0.0.1", "--port", str(self.router_port), *flags], log_dir, "router"
        )
        self.processes.append(self.router)
        self.url = f"http://127.0.0.1:{self.router_port}"
        for model, port in self.engine_ports.items():
            wait_until(lambda p=port: engine_ready(f"127.0.0.1:{p}"), 120, f"engine {model}", self.processes)
        wait_until(
            lambda: http_json(self.url + "/health")[1]["engines_ready"] == 2, 30, "router", self.processes
        )

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


@pytest.fixture(scope="module")
def two_models(model_dirs, tmp_path_factory):
    stack = TwoModels(model_dirs, tmp_path_factory.mktemp("logs"))
    yield stack
    stack.stop()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.loads(r.read())


def test_each_model_is_tokenized_by_its_own_tokenizer(two_models, model_dirs):
    from transformers import AutoTokenizer

    client = two_models.client()
    assert sorted(m.id for m in client.models.list().data) == [A, B]
    for model, folder in model_dirs.items():
        own = AutoTokenizer.from_pretrained(folder)
        expected = own.apply_chat_template(MSGS, add_generation_prompt=True, tokenize=True, return_dict=False)
        tokens = _post(two_models.url + "/tokenize", {"model": model, "messages": MSGS})["tokens"]
        assert tokens == expected, model
        text = "Which tokenizer reads this sentence?"
        plain = _post(two_models.url + "/tokenize", {"model": model, "prompt": text})["tokens"]
        assert plain == own(text)["input_ids"], model
        assert _post(two_models.url + "/detokenize", {"model": model, "tokens": plain})[
            "prompt"
        ] == own.decode(plain, skip_special_tokens=True)
        # Generation through each model's own engine: the prompt counted in its own vocabulary, the
        # text decoded by it, and token-id prompts checked against its vocabulary size.
        r = client.chat.completions.create(model=model, messages=MSGS, max_tokens=6, temperature=0)
        assert r.model == model and r.usage.prompt_tokens == len(expected)
        assert r.choices[0].finish_reason in ("stop", "length")
        completion = client.completions.create(
            model=model, prompt=plain, max_tokens=4, temperature=0, echo=True, extra_body={"ignore_eos": True}
        )
        assert completion.choices[0].text.startswith(own.decode(plain, skip_special_tokens=True))
        assert completion.usage.prompt_tokens == len(plain) and completion.usage.completion_tokens == 4
    # The vocabularies really differ: B's ids are a different sequence, all below its 320.
    a_ids = _post(two_models.url + "/tokenize", {"model": A, "messages": MSGS})["tokens"]
    b_ids = _post(two_models.url + "/tokenize", {"model": B, "messages": MSGS})["tokens"]
    assert a_ids != b_ids and max(b_ids) < B_VOCAB < max(a_ids)
    with pytest.raises(openai.BadRequestError):  # A's ids are outside B's vocabulary
        client.completions.create(model=B, prompt=a_ids, max_tokens=1)


def test_a_model_without_a_tokenizer_is_a_clear_503(two_models, model_dirs, tmp_path):
    """A router given a tokenizer for A only: B's requests fail with a message naming the flag."""
    port = free_port()
    router = Process(
        ["router", "--host", "127.0.0.1", "--port", str(port),
         "--tokenizer", f"{A}=127.0.0.1:{two_models.tokenizer_ports[A]}",
         *[f for p in two_models.engine_ports.values() for f in ("--engine", f"127.0.0.1:{p}")]],
        tmp_path,
        "router-a-only",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_json(url + "/health")[1]["engines_ready"] == 2, 30, "router", [router])
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        assert client.chat.completions.create(model=A, messages=MSGS, max_tokens=1).model == A
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=B, messages=MSGS, max_tokens=1)
        assert err.value.status_code == 503
        assert f"--tokenizer {B}=HOST:PORT" in err.value.message
    finally:
        router.stop()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_tokenizer_flags_parse_per_model_and_default():
    from router.main import parse_args

    engines = ["--engine", "127.0.0.1:1"]
    assert parse_args(engines).tokenizer == "127.0.0.1:50052"  # no flag: the local default
    assert parse_args(engines).model_tokenizers == ()
    one = parse_args(["--tokenizer", "tok:50052", *engines])
    assert (one.tokenizer, one.model_tokenizers) == ("tok:50052", ())
    qwen, mistral = "Qwen/Qwen2.5-7B-Instruct=dns:///qwen-tok:50052", "mistral=10.0.0.9:50052"
    config = parse_args(["--tokenizer", qwen, "--tokenizer", mistral, *engines])
    assert config.tokenizer is None  # only per-model tokenizers: other models get the 503 above
    assert dict(config.model_tokenizers) == {
        "Qwen/Qwen2.5-7B-Instruct": "dns:///qwen-tok:50052",
        "mistral": "10.0.0.9:50052",
    }
    mixed = parse_args(["--tokenizer", "shared:50052", "--tokenizer", "m=own:50052", *engines])
    assert (mixed.tokenizer, mixed.model_tokenizers) == ("shared:50052", (("m", "own:50052"),))
    for bad in (["a:1", "b:1"], ["m=a:1", "m=b:1"], ["=a:1"], ["m="]):
        with pytest.raises(SystemExit):
            parse_args([f for value in bad for f in ("--tokenizer", value)] + engines)
