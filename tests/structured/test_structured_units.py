"""The grammar engine's parts on their own: parse errors, the compiled-grammar cache, a sequence's grammar
state (re-derived from its tokens when out of step), the reasoning gate, the mask kernels (torch and
Triton's interpreter agree) and the sampler, which masks in every sampling mode and keeps raw logprobs."""

from __future__ import annotations

import json

import pytest
import torch
import xgrammar as xgr

from engine_service import SamplingParams, StructuredOutputsParams
from engine_service.core.sequence import Sequence
from engine_service.ops import torch_ops
from engine_service.structured import grammar
from engine_service.structured.compiler import GrammarCompiler
from engine_service.structured.state import GrammarState, ReasoningGate
from engine_service.worker.sampler import Sampler
from engine_service.worker.token_bitmask import TokenBitmask


@pytest.mark.parametrize(
    "params,phrase",
    [
        (StructuredOutputsParams(json='{"type": "objekt"}'), "structured_outputs.json is not valid"),
        (StructuredOutputsParams(json="{"), "not JSON"),
        (StructuredOutputsParams(regex="a(b"), "structured_outputs.regex is not valid"),
        (StructuredOutputsParams(grammar="root ::= foo"), "structured_outputs.grammar is not valid"),
        (StructuredOutputsParams(lark="start: foo"), "structured_outputs.lark is not valid"),
        (StructuredOutputsParams(), "set exactly one"),
        (StructuredOutputsParams(regex="a", choice=("b",)), "set exactly one"),
        (StructuredOutputsParams(choice=("",)), "non-empty"),
        (StructuredOutputsParams(regex="a" * 70000), "too long"),
        (StructuredOutputsParams(regex="a", reasoning_start="<think>"), "needs reasoning_end"),
    ],
)
def test_bad_constraints_name_the_field(params, phrase):
    with pytest.raises(ValueError, match="structured_outputs") as info:
        grammar.parse(params)
    assert phrase in str(info.value)
    assert "/project/cpp" not in str(info.value)  # xgrammar's source locations are cut


def test_choices_with_quotes_and_backslashes_are_literal():
    g = grammar.parse(StructuredOutputsParams(choice=('a"b', "c\\d", "é\n")))
    info = xgr.TokenizerInfo([bytes([i]) for i in range(256)])
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_grammar(g))
    assert matcher.accept_string("c\\d") and matcher.is_completed()


def _byte_info() -> xgr.TokenizerInfo:
    """A vocabulary of the 256 bytes (token i is byte i) and an EOS token 256."""
    return xgr.TokenizerInfo([bytes([i]) for i in range(256)] + [b""], vocab_size=257, stop_token_ids=[256])


def test_compiler_caches_by_constraint_and_keeps_failures():
    compiler = GrammarCompiler(_byte_info)
    a = compiler.submit(StructuredOutputsParams(regex="[0-9]+"))
    assert compiler.submit(StructuredOutputsParams(regex="[0-9]+")) is a
    assert compiler.submit(StructuredOutputsParams(regex="[a-z]+")) is not a
    bad = compiler.submit(StructuredOutputsParams(regex="("))
    assert isinstance(bad.exception(timeout=30), ValueError)
    assert compiler.submit(StructuredOutputsParams(regex="(")) is bad
    assert isinstance(a.result(timeout=30), xgr.CompiledGrammar)
    compiler.shutdown()


def _state(regex: str, gate: ReasoningGate | None = None) -> GrammarState:
    compiled = xgr.GrammarCompiler(_byte_info()).compile_grammar(
        grammar.parse(StructuredOutputsParams(regex=regex))
    )
    return GrammarState(compiled, gate)


def _allowed(state: GrammarState) -> set[int]:
    bits = torch.full((1, TokenBitmask.words(257)), -1, dtype=torch.int32)
    state.fill(bits, 0)
    logits = torch.zeros(1, 257)
    torch_ops.apply_token_bitmask(logits, bits, torch.tensor([0]))
    return set(logits[0].isfinite().nonzero()[:, 0].tolist())


def test_grammar_state_ends_with_eos_and_rebuilds_when_out_of_step():
    state = _state("ab")
    assert _allowed(state) == {ord("a")}
    assert state.accept(ord("a")) is False
    assert _allowed(state) == {ord("b")}
    assert state.accept(ord("b")) is False
    assert _allowed(state) == {256}  # complete: only EOS
    assert state.accept(256) is True
    # Out of step (as after a lost update): the state is rebuilt from the sequence's tokens.
    state = _state("abc")
    state.accept(ord("a"))
    state.catch_up([ord("a"), ord("b"), -1], 2)
    assert state.num_seen == 2 and _allowed(state) == {ord("c")}
    with pytest.raises(RuntimeError, match="before the tokens"):
        _state("abc").catch_up([ord("a"), -1, -1], 2)  # a placeholder where a known token must be


def test_a_token_outside_the_grammar_ends_the_sequence():
    state = _state("ab")
    assert state.accept(ord("z")) is True and state.complete


def test_reasoning_gate_opens_after_the_end_marker():
    start, end = [1, 2], [3, 4]
    assert (
        ReasoningGate.for_prompt([9, 9, 1, 2, 5], start, end).ended is False
    )  # the template opened thinking
    assert ReasoningGate.for_prompt([9, 1, 2, 5, 3, 4, 5], start, end).ended is True  # ... and closed it
    assert ReasoningGate.for_prompt([9, 9, 9], start, end).ended is False
    state = _state("ab", ReasoningGate(end, ended=False))
    assert not state.constrains_next
    for token in (ord("x"), 3, ord("y"), 3):  # free text: not fed to the matcher
        assert state.accept(token) is False and not state.constrains_next
    state.accept(4)
    assert state.constrains_next and _allowed(state) == {ord("a")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bitmask_kernel_matches_torch(dtype):
    from engine_service.ops import triton_bitmask

    g = torch.Generator().manual_seed(0)
    B, V = 5, 3000  # V not a multiple of 32 or of the kernel's block
    logits = torch.randn(B, V, generator=g).to(dtype)
    bits = torch.randint(-(2**31), 2**31 - 1, (3, TokenBitmask.words(V)), generator=g, dtype=torch.int32)
    rows = torch.tensor([4, 0, 2])
    expected, got = logits.clone(), logits.clone()
    torch_ops.apply_token_bitmask(expected, bits, rows)
    triton_bitmask.apply_token_bitmask(got, bits, rows)
    assert torch.equal(expected, got)
    assert torch.equal(got[[1, 3]], logits[[1, 3]])  # rows without a mask are untouched
    word, bit = divmod(17, 32)
    assert got[4, 17].isinf().item() == (not (bits[0, word] >> bit) & 1)


def _seqs(params: list[SamplingParams]) -> list[Sequence]:
    return [Sequence(f"r{i}#0", f"r{i}", 0, [1, 2, 3], p) for i, p in enumerate(params)]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=1.0, seed=7),
        SamplingParams(temperature=0.8, top_k=5, top_p=0.9, seed=1),
        SamplingParams(temperature=1.0, min_p=0.05, seed=2),
        SamplingParams(temperature=1.0, repetition_penalty=1.3, presence_penalty=0.5, seed=3),
        SamplingParams(temperature=1.0, logit_bias={11: 50.0}, seed=4),
    ],
    ids=["greedy", "seeded", "top-k/p", "min-p", "penalties", "logit-bias"],
)
def test_sampler_draws_only_allowed_tokens_in_every_mode(params):
    V = 64
    sampler = Sampler(torch.device("cpu"), eos_token_ids=(2,), seed=0)
    allowed = [5, 9, 40]
    bits = torch.zeros(1, TokenBitmask.words(V), dtype=torch.int32)
    for t in allowed:
        bits[0, t // 32] |= 1 << (t % 32)
    other = SamplingParams(temperature=0.0, logprobs=3)
    for step in range(20):
        logits = torch.randn(2, V, generator=torch.Generator().manual_seed(step))
        logits[0, 11] = 30.0  # the model's favourite: outside the grammar
        raw = torch.log_softmax(logits, dim=-1)
        seqs = _seqs([params, other])
        result = sampler(logits.clone(), seqs, [step, step], TokenBitmask([0], bits))
        assert result.token_ids[0] in allowed
        assert result.token_ids[1] == int(raw[1].argmax())  # an unconstrained row is untouched
        assert result.logprobs[1].logprob == pytest.approx(float(raw[1].max()), abs=1e-5)  # raw logprobs


def test_sampler_logprobs_stay_the_models(tiny_llm):
    """With logprobs, the sampled token's logprob is the model's own (before the mask), as the proto says."""
    so = StructuredOutputsParams(choice=("yes", "no"))
    out = tiny_llm.generate(
        prompt_token_ids=[[1, 2, 3]],
        sampling_params=SamplingParams(max_tokens=4, temperature=0, logprobs=2, structured_outputs=so),
    )[0].outputs[0]
    assert out.text in ("yes", "no")
    first = out.logprobs[0]
    assert first.logprob < 0 and first.top and first.top[0][1] >= first.logprob
    assert json.dumps(first.top)  # plain numbers


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bitmask_kernel_on_the_gpu_in_bf16():
    from engine_service.ops import dispatch

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 128256, generator=g).to(torch.bfloat16)
    bits = torch.randint(
        -(2**31), 2**31 - 1, (256, TokenBitmask.words(128256)), generator=g, dtype=torch.int32
    )
    rows = torch.randperm(300, generator=g)[:256]
    expected = logits.clone()
    torch_ops.apply_token_bitmask(expected, bits, rows)
    got = logits.cuda()
    dispatch.apply_token_bitmask(got, bits.cuda(), rows.cuda())
    assert torch.equal(got.cpu(), expected)
