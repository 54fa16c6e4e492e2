"""How an engine decides it serves embeddings and how it pools, from the model folder."""

from __future__ import annotations

import json

import pytest

from engine_service.core.model_config import ModelConfig
from engine_service.core.pooling import pooling_config, resolve_task


def st_folder(tmp_path, modes: dict, normalize: bool = True):
    modules = [{"path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if normalize:
        modules.append({"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (tmp_path / "modules.json").write_text(json.dumps(modules))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(modes))
    return tmp_path


def test_task(tmp_path):
    assert resolve_task("auto", tmp_path, "LlamaForCausalLM") == "generate"
    assert resolve_task("auto", tmp_path, "MistralModel") == "embed"  # e5-mistral's architecture
    assert resolve_task("pooling", tmp_path, "LlamaForCausalLM") == "embed"
    folder = st_folder(tmp_path, {"pooling_mode_lasttoken": True})
    assert resolve_task("auto", folder, "Qwen3ForCausalLM") == "embed"  # Qwen3-Embedding
    assert resolve_task("generate", folder, "Qwen3ForCausalLM") == "generate"


def test_pooling_from_sentence_transformers(tmp_path):
    assert pooling_config(tmp_path).method == "last"  # no sentence-transformers config
    folder = st_folder(tmp_path, {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": False}, False)
    config = pooling_config(folder, matryoshka_dimensions=(32, 64))
    assert (config.method, config.normalize, config.reads_every_position) == ("mean", False, True)
    assert config.matryoshka and config.matryoshka_dimensions == (32, 64)
    assert not pooling_config(folder).matryoshka


def test_unknown_pooling_is_an_error(tmp_path):
    folder = st_folder(tmp_path, {"pooling_mode_max_tokens": True})
    with pytest.raises(ValueError, match="pooling"):
        pooling_config(folder)


def test_matryoshka_keys_read_from_config_json():
    base = {"vocab_size": 8, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1}
    base["num_attention_heads"] = 1
    mc = ModelConfig.from_dict({**base, "matryoshka_dimensions": [32, 64]})
    assert (mc.is_matryoshka, mc.matryoshka_dimensions) == (False, (32, 64))
    assert ModelConfig.from_dict({**base, "is_matryoshka": True}).is_matryoshka
    assert ModelConfig.from_dict(base).matryoshka_dimensions == ()
