"""Embedding models: `Embed` on an engine whose folder is a sentence-transformers decoder (a tiny random Llama
with SmolLM2's tokenizer, last-token or mean pooling, Matryoshka), checked against transformers' hidden states
pooled the same way and normalised; chunked prefill and the prefix cache change nothing."""

from __future__ import annotations

import json
import shutil

import grpc
import pytest
import torch

from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.server_thread import ServerThread, tiny_config

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello", "The quick brown fox likes embeddings too."]


def embedding_model(folder, chat_dir, pooling: str):
    """The tiny chat model's folder as a sentence-transformers model with `pooling`, Matryoshka."""
    shutil.copytree(chat_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "is_matryoshka": True}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({f"pooling_mode_{pooling}": True}))
    return folder


def reference(folder, token_ids: list[int], pooling: str) -> torch.Tensor:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([token_ids])).last_hidden_state[0]  # [T, H], after the final norm
    pooled = hidden[-1] if pooling == "lasttoken" else hidden.mean(0)
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.mark.parametrize("pooling", ["lasttoken", "mean_tokens"])
def test_embed_matches_transformers(tmp_path, tiny_chat_model_dir, pooling):
    from transformers import AutoTokenizer

    folder = embedding_model(tmp_path / "embed", tiny_chat_model_dir, pooling)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = tiny_config(folder, max_num_batched_tokens=16, block_size=4)  # chunked; blocks get cached
    with ServerThread(config) as server:
        info = server.stub.GetModelInfo(pb.GetModelInfoRequest())
        assert info.task == pb.MODEL_TASK_EMBED and info.embedding_size == 64 and info.matryoshka
        inputs = [pb.EmbedInput(text=t) for t in TEXTS] + [
            pb.EmbedInput(token_ids=pb.TokenIds(ids=tokenizer.encode(TEXTS[0])))
        ]
        r = server.stub.Embed(pb.EmbedRequest(inputs=inputs))
        assert len(r.embeddings) == 4
        for text, e in zip([*TEXTS, TEXTS[0]], r.embeddings, strict=True):
            ids = tokenizer.encode(text)
            assert e.num_tokens == len(ids)
            assert torch.tensor(list(e.values)) == pytest.approx(reference(folder, ids, pooling), abs=1e-4)
        assert r.prompt_tokens == sum(e.num_tokens for e in r.embeddings)
        short = server.stub.Embed(pb.EmbedRequest(inputs=inputs[:1], dimensions=16)).embeddings[0].values
        full = torch.tensor(list(r.embeddings[0].values))[:16]
        assert torch.tensor(list(short)) == pytest.approx(full / full.norm(), abs=1e-5)
        for bad, phrase in (
            (pb.EmbedRequest(), "1 to 2048"),
            (pb.EmbedRequest(inputs=inputs[:1], dimensions=65), "dimensions"),
            (pb.EmbedRequest(inputs=[pb.EmbedInput()]), "empty"),
        ):
            with pytest.raises(grpc.RpcError) as err:
                server.stub.Embed(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and phrase in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            list(server.stub.Generate(pb.GenerateRequest(text="hi")))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Embed" in err.value.details()
        start = pb.MultiplexRequest(handle=7, generate=pb.GenerateRequest(text="hi"))
        # the generation fails; the call ends when its requests did and every generation ended
        (failed,) = [m for r in server.stub.Multiplex(iter([start])) for m in r.messages]
        assert failed.handle == 7 and failed.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "Embed" in failed.error_message
        assert server.stub.GetServerInfo(pb.GetServerInfoRequest()).num_free_blocks == 64  # nothing held


def test_generate_engine_refuses_embed(tiny_chat_model_dir):
    with ServerThread(tiny_config(tiny_chat_model_dir)) as server:
        with pytest.raises(grpc.RpcError) as err:
            server.stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="x")]))
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "embedding model" in err.value.details()
        )
