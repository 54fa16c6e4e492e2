"""The default SmolLM2 model streams a real answer through the engine service."""

from __future__ import annotations

from pagoda.engine.v1 import engine_pb2 as pb
from tests.engine_service.server_thread import ServerThread, tiny_engine


def test_default_model_streams_the_answer(default_model_dir, tokenizer):
    engine = tiny_engine(
        default_model_dir, num_kv_blocks=16, max_num_seqs=4, served_model_name="SmolLM2-135M-Instruct"
    )
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    with ServerThread(engine) as s:
        assert s.stub.GetModelInfo(pb.GetModelInfoRequest()).served_model_name == "SmolLM2-135M-Instruct"
        req = pb.GenerateRequest(
            prompt_token_ids=pb.TokenIds(ids=ids),
            sampling_params=pb.SamplingParams(temperature=0.0, max_tokens=10),
        )
        msgs = list(s.stub.Generate(req, timeout=60))
    text = "".join(m.text for m in msgs)
    assert "Paris" in text, text
    assert len(msgs) > 1 and all(m.token_ids for m in msgs)  # streamed, not one final message
    assert msgs[-1].usage.prompt_tokens == len(ids)
