"""Structured outputs in the engine (offline API, a tiny random model with the default model's real 49k
vocabulary): every sample follows its constraint in every sampling mode, the grammar's end is a "stop",
async scheduling and preemption give the same tokens as the plain loop, and a bad constraint is refused
before anything is queued."""

from __future__ import annotations

import json

import jsonschema
import pytest

from engine_service import LLM, SamplingParams, StructuredOutputsParams
from tests.structured.schemas import PERSON

SCHEMA = StructuredOutputsParams(json=json.dumps(PERSON))
PROMPTS = [[1, 22, 333, 4444], [5, 66, 777]]


def _texts(outs) -> list[str]:
    return [c.text for o in outs for c in o.outputs]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=200, temperature=0.0),
        SamplingParams(max_tokens=200, temperature=1.0, n=3, seed=5),
        SamplingParams(max_tokens=200, temperature=0.9, top_k=40, top_p=0.9, n=3, seed=6),
        SamplingParams(max_tokens=200, temperature=1.0, repetition_penalty=1.2, presence_penalty=0.5, seed=7),
    ],
    ids=["greedy", "sampled-n3", "top-k/p-n3", "penalties"],
)
def test_json_schema_output_validates(tiny_llm, params):
    params.structured_outputs = SCHEMA
    prompts = PROMPTS if params.n == 1 else PROMPTS[:1]  # n = 3: three samples of one prompt
    outs = tiny_llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for o in outs:
        for c in o.outputs:
            assert c.finish_reason == "stop", c.text
            jsonschema.validate(json.loads(c.text), PERSON)
            assert c.token_ids[-1] == 2  # the grammar ended with EOS


def test_regex_choice_and_grammar_end_is_a_stop(tiny_llm):
    cases = [
        (StructuredOutputsParams(regex=r"[0-9]{3}-[a-z]{2}"), lambda t: len(t) == 6 and t[3] == "-"),
        (StructuredOutputsParams(choice=("yes", "no", "maybe so")), lambda t: t in ("yes", "no", "maybe so")),
        (StructuredOutputsParams(grammar='root ::= "(" [a-c] [a-c]? ")"'), lambda t: t[0] + t[-1] == "()"),
        (
            StructuredOutputsParams(lark='start: "x" DIGIT\nDIGIT: /[0-9]/'),
            lambda t: t[0] == "x" and t[1].isdigit(),
        ),
    ]
    for so, ok in cases:
        # ignore_eos: EOS does not stop the sample, the grammar's end does.
        for params in (
            SamplingParams(max_tokens=40, temperature=1.0, seed=3, n=2, structured_outputs=so),
            SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, structured_outputs=so),
        ):
            for c in tiny_llm.generate(prompt_token_ids=PROMPTS[:1], sampling_params=params)[0].outputs:
                assert c.finish_reason == "stop" and ok(c.text), (so, c.text)


def test_json_object(tiny_llm):
    so = StructuredOutputsParams(json_object=True)
    params = SamplingParams(max_tokens=60, temperature=0.0, structured_outputs=so)
    out = tiny_llm.generate(prompt_token_ids=PROMPTS[:1], sampling_params=params)[0].outputs[0]
    assert out.text.startswith("{")  # may run out of tokens inside the object: a random model's
    if out.finish_reason == "stop":
        assert isinstance(json.loads(out.text), dict)


def test_bad_constraint_is_refused_before_queueing(tiny_llm):
    engine = tiny_llm.engine
    bad = SamplingParams(structured_outputs=StructuredOutputsParams(json='{"type": "objekt"}'))
    with pytest.raises(ValueError, match="structured_outputs.json is not valid"):
        tiny_llm.generate(prompt_token_ids=PROMPTS, sampling_params=[SamplingParams(), bad])
    assert not engine.has_unfinished() and engine.stats().num_waiting == 0


def test_reasoning_gate(tiny_llm):
    """The constraint starts after the reasoning's end marker: at once when the prompt closed it."""
    tok = tiny_llm.tokenizer
    so = StructuredOutputsParams(choice=("yes", "no"), reasoning_start="<think>", reasoning_end="</think>")
    params = SamplingParams(max_tokens=12, temperature=0.0, structured_outputs=so)
    closed = [1, 2, 3, *tok.encode("<think>\n\n</think>\n\n")]
    opened = [1, 2, 3, *tok.encode("<think>\n")]
    outs = tiny_llm.generate(prompt_token_ids=[closed, opened], sampling_params=params)
    assert outs[0].outputs[0].text in ("yes", "no")
    free = outs[1].outputs[0]  # thinking: the random model writes what it likes, unconstrained
    assert free.finish_reason == "length" and free.text not in ("yes", "no")


def _llm(model_dir, **kwargs) -> LLM:
    return LLM(str(model_dir), device="cpu", dtype="float32", max_model_len=512, seed=0, **kwargs)


def test_async_scheduling_and_preemption_give_the_same_tokens(tiny_chat_model_dir, tiny_llm):
    """The grammar follows async scheduling (the mask of step n+1 waits for step n's token) and
    preemption by recompute exactly: the same seeded requests give the same tokens."""
    params = [
        SamplingParams(max_tokens=120, temperature=1.0, seed=s, n=2, structured_outputs=SCHEMA)
        for s in range(4)
    ]
    prompts = [[7 + i, 8, 9, 10 + i] for i in range(4)]
    want = _texts(tiny_llm.generate(prompt_token_ids=prompts, sampling_params=params))
    # 10 blocks of 16 tokens for 8 sequences of ~4 + ~60 tokens: most get preempted along the way.
    tight = _llm(tiny_chat_model_dir, num_kv_blocks=10, block_size=16, async_scheduling=True)
    got = _texts(tight.generate(prompt_token_ids=prompts, sampling_params=params))
    assert tight.engine.stats().num_preemptions > 0
    assert got == want
    for text in got:
        jsonschema.validate(json.loads(text), PERSON)


def test_tensor_parallel_ranks_apply_the_same_masks(tiny_chat_model_dir, tiny_llm):
    """With two ranks (gloo on CPU) the step message carries the masks: TP=2 gives TP=1's tokens."""
    params = [
        SamplingParams(max_tokens=100, temperature=1.0, seed=3, n=2, structured_outputs=SCHEMA),
        SamplingParams(
            max_tokens=10, temperature=0.0, structured_outputs=StructuredOutputsParams(choice=("a", "b"))
        ),
    ]
    want = _texts(tiny_llm.generate(prompt_token_ids=PROMPTS, sampling_params=params))
    tp = _llm(tiny_chat_model_dir, tensor_parallel_size=2, async_scheduling=True)
    try:
        assert _texts(tp.generate(prompt_token_ids=PROMPTS, sampling_params=params)) == want
    finally:
        tp.engine.shutdown()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_with_cuda_graphs_and_async_scheduling(tiny_chat_model_dir):
    """The GPU path: decode steps replay CUDA graphs, async scheduling overlaps the mask with the forward."""
    params = [
        SamplingParams(max_tokens=200, temperature=1.0, seed=s, n=2, structured_outputs=SCHEMA)
        for s in range(8)
    ]
    prompts = [[7 + i, 8, 9, 10 + i] for i in range(8)]
    texts = {}
    for name, async_scheduling in (("async", True), ("sync", False)):
        llm = LLM(
            str(tiny_chat_model_dir),
            device="cuda",
            dtype="float32",
            max_model_len=512,
            seed=0,
            async_scheduling=async_scheduling,
        )
        try:
            texts[name] = _texts(llm.generate(prompt_token_ids=prompts, sampling_params=params))
            assert llm.engine.runner.graphs is not None
        finally:
            llm.engine.shutdown()
    assert texts["async"] == texts["sync"]
    for text in texts["async"]:
        jsonschema.validate(json.loads(text), PERSON)
