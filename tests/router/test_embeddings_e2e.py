"""/v1/embeddings end to end: the router in front of an engine running an embedding model (a tiny random Llama
as a sentence-transformers last-token model, Matryoshka), through the openai SDK, against transformers."""

from __future__ import annotations

import base64
import struct

import openai
import pytest
import torch
from api_stack import ApiStack, post_json

from tests.engine_service.test_embed import embedding_model, reference

MODEL = "tiny-embed"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings, please."]


@pytest.fixture(scope="module")
def folder(tiny_chat_model_dir, tmp_path_factory):
    return embedding_model(tmp_path_factory.mktemp("embed") / "model", tiny_chat_model_dir, "lasttoken")


@pytest.fixture(scope="module")
def stack(folder, tmp_path_factory):
    s = ApiStack(folder, tmp_path_factory.mktemp("embed-stack"), MODEL, ["--num-kv-blocks", "64"])
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def test_embeddings_match_transformers(stack, folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    client = stack.client()
    r = client.embeddings.create(model=MODEL, input=TEXTS)
    assert r.object == "list" and r.model == MODEL and [d.index for d in r.data] == [0, 1]
    ids = [tokenizer.encode(t) for t in TEXTS]
    for d, token_ids in zip(r.data, ids, strict=True):
        assert torch.tensor(d.embedding) == pytest.approx(reference(folder, token_ids, "lasttoken"), abs=1e-4)
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(len(i) for i in ids)
    by_ids = client.embeddings.create(model=MODEL, input=ids[0])  # token ids, one input
    assert by_ids.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    raw = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="base64")
    packed = base64.b64decode(raw.data[0].embedding)  # the SDK hands base64 through when asked for it
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(
        r.data[0].embedding, abs=1e-6
    )
    short = client.embeddings.create(model=MODEL, input=TEXTS[0], dimensions=8).data[0].embedding
    head = torch.tensor(r.data[0].embedding[:8])
    assert torch.tensor(short) == pytest.approx(head / head.norm(), abs=1e-5)


def test_embedding_errors(stack):
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model=MODEL, input="x", dimensions=65)
    assert err.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1)
    assert "embedding model" in err.value.body["message"]
    status, body = post_json(stack.url + "/v1/embeddings", {"model": MODEL, "input": []})
    assert status == 400 and body["error"]["param"] == "input"
    status, body = post_json(
        stack.url + "/v1/embeddings", {"model": MODEL, "input": "x", "encoding_format": "x"}
    )
    assert status == 400 and body["error"]["param"] == "encoding_format"
