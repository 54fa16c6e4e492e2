"""Fused sampling: Philox noise and Gumbel-max tokens, Triton (interpreted without a GPU) against torch_ops.

Both paths must draw bit-identical u for the same (seed, position, column); tokens then agree unless two
scores tie to the last bit. The torch path's statistics (uniform u, independent columns, positions and
seeds; token frequencies matching softmax(logits / T)) carry over to the kernel through that identity, and
are checked on the kernel itself on a GPU, where draws are cheap.
"""

import math

import pytest
import torch

from engine_service import SamplingParams
from engine_service.core.sequence import Sequence
from engine_service.ops import torch_ops
from engine_service.ops import triton_sampling as ts
from engine_service.worker.sampler import Sampler

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GPU = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def chi2_bound(df: int, z: float = 4.0) -> float:
    """Quantile of chi-square(df) at the normal's z (Wilson-Hilferty): z = 4 fails 3e-5 of fair runs."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi2(counts: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


def batch_inputs(batch: int, seed: int, device: str = DEVICE):
    """Random 63-bit seeds and 31-bit positions (the extremes included), temperatures mixing greedy rows."""
    g = torch.Generator().manual_seed(seed)
    seeds = torch.randint(0, 2**63 - 1, (batch,), generator=g)
    seeds[:3] = torch.tensor([0, 1, 2**63 - 1])[:batch]
    positions = torch.randint(0, 2**31 - 1, (batch,), generator=g)
    positions[:2] = torch.tensor([0, 2**31 - 1])[:batch]
    # A lone row samples (row 0 of the cycle is greedy): the batch-1 case must exercise the noise.
    cycle = torch.tensor([0.0, 1.0, 0.3, 1.7]) if batch > 1 else torch.tensor([1.0])
    temperature = cycle[torch.arange(batch) % len(cycle)]
    return temperature.to(device), seeds.to(device), positions.to(device)


# ---- the noise ---------------------------------------------------------------------------------------------


def test_philox_matches_random123_known_answers():
    # Random123's kat_vectors for philox4x32_10: (counter, key) -> output.
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, want in cases:
        words = torch_ops.philox4x32(*(torch.tensor([x]) for x in counter + key))
        assert tuple(int(w) for w in words) == want


def test_kernel_draws_bit_identical_uniforms():
    _, seeds, positions = batch_inputs(6, seed=1)
    vocab = 4 * ts.BLOCK_R + 3  # a second tile, and a last counter with only 3 of its 4 words used
    got = ts.sampling_uniform(seeds, positions, vocab)
    want = torch_ops.sampling_uniform(seeds, positions, vocab)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_uniforms_are_uniform_and_independent():
    rows, vocab = 64, 16384  # 1M draws: adjacent seeds (the samples of one request) at adjacent positions
    seeds = 1234 + torch.arange(rows) // 8
    positions = torch.arange(rows) % 8
    u = torch_ops.sampling_uniform(seeds, positions, vocab).double()  # [R, V]
    assert float(u.min()) >= 2.0**-24 and float(u.max()) <= 1.0 - 2.0**-24
    n = u.numel()
    assert abs(float(u.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / n)
    assert abs(float(u.var()) - 1 / 12) < 5 * math.sqrt(1 / 180 / n)  # Var of (u - 1/2)^2 is 1/180
    bins = 256
    counts = torch.bincount((u * bins).long().flatten(), minlength=bins)
    assert chi2(counts, torch.full((bins,), n / bins, dtype=torch.float64)) < chi2_bound(bins - 1)
    # 4 x 4 grid of the pairs (column c, column c + 1): catches structure inside and across Philox words.
    pairs = ((u[:, :-1] * 4).long() * 4 + (u[:, 1:] * 4).long()).flatten()
    grid = torch.bincount(pairs, minlength=16)
    assert chi2(grid, torch.full((16,), pairs.numel() / 16, dtype=torch.float64)) < chi2_bound(15)

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.flatten() - 0.5, b.flatten() - 0.5
        return float((a * b).mean() * 12)

    limit = 5 / math.sqrt(n / 2)
    assert abs(corr(u[:, :-1], u[:, 1:])) < limit  # adjacent columns
    by_seed = u.view(8, 8, vocab)  # [seed, position, column]
    assert abs(corr(by_seed[:, :-1], by_seed[:, 1:])) < limit  # adjacent positions, same seed and column
    assert abs(corr(by_seed[:-1], by_seed[1:])) < limit  # adjacent seeds, same position and column


# ---- the tokens --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_tokens_bit_identical_to_torch(dtype, num_splits):
    batch, vocab = 32, 3 * 4 * ts.BLOCK_R - 5  # three tiles, the last one ragged
    temperature, seeds, positions = batch_inputs(batch, seed=2)
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(batch, vocab, generator=g) * 4).to(dtype)
    logits[5, 100:] = float("-inf")  # a sampling row masked down to its first 100 columns
    logits[8:10] = float("-inf")  # nothing allowed, greedy or not: column 0, as torch.argmax says
    logits[12] = 1.0  # a greedy row of ties: the lowest column
    logits[16, [7, 3000, 6000]] = 1000.0  # greedy, the max tied across tiles and splits
    logits = logits.to(DEVICE)
    want = torch_ops.sample_tokens(logits, temperature, seeds, positions)
    got = ts.sample_tokens(logits, temperature, seeds, positions, num_splits=num_splits)
    assert got.dtype == torch.int64
    if DEVICE == "cpu":  # interpreted: fp32 ops as torch does them, exact logs: the same tokens
        assert torch.equal(got, want)
    else:  # compiled: lg2.approx and fused multiply-adds may break a last-bit tie the other way
        assert_same_or_near_tie(got, want, logits, temperature, seeds, positions)
    assert got[5] < 100 and got[8] == got[9] == 0 and got[12] == 0 and got[16] == 7
    greedy = temperature == 0
    assert torch.equal(got[greedy], logits[greedy].float().argmax(dim=-1))
    assert (got[~greedy] != logits[~greedy].float().argmax(dim=-1)).any()  # the noise does something


def test_tokens_follow_softmax_over_positions():
    # One seed, 20k positions: the draws of one sequence over its life follow softmax(logits / T).
    n, temperature = 20000, 0.7
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0, -6.0]])
    tokens = torch_ops.sample_tokens(
        logits.expand(n, -1), torch.full((n,), temperature), torch.full((n,), 42), torch.arange(n)
    )
    probs = torch.softmax(logits[0].double() / temperature, dim=-1)
    counts = torch.bincount(tokens, minlength=8)
    assert chi2(counts, n * probs) < chi2_bound(7)


def test_empty_batch():
    temperature, seeds, positions = (t[:0] for t in batch_inputs(4, seed=0))
    for sample_tokens in (ts.sample_tokens, torch_ops.sample_tokens):
        out = sample_tokens(torch.empty(0, 10, device=DEVICE), temperature, seeds, positions)
        assert out.shape == (0,) and out.dtype == torch.int64


# ---- the Sampler on top ------------------------------------------------------------------------------------


def make_seq(request: str, params: SamplingParams, outputs: list[int], index: int = 0) -> Sequence:
    seq = Sequence(f"{request}#{index}", request, index, [1, 2, 3], params)
    seq.output_token_ids = list(outputs)
    return seq


def test_seeded_draw_depends_on_seed_index_and_output_count_only():
    vocab = 64
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(4))
    seeded = SamplingParams(temperature=1.0, seed=7, n=2)
    noise = SamplingParams(temperature=1.0)

    def draw(seqs, row):
        return Sampler(torch.device("cpu"), (0,), seed=len(seqs))(
            logits.expand(len(seqs), -1), seqs
        ).token_ids[row]

    alone = [draw([make_seq("a", seeded, [5] * k)], 0) for k in range(30)]
    # Other rows around it, another sampler seed, other previous tokens: the k-th draw stays the same.
    batched = [draw([make_seq("x", noise, []), make_seq("a", seeded, [9] * k), make_seq("y", noise, [])], 1)
               for k in range(30)]  # fmt: skip
    assert alone == batched and len(set(alone)) > 3
    second_sample = [draw([make_seq("a", seeded, [5] * k, index=1)], 0) for k in range(30)]
    assert second_sample != alone


def test_unseeded_sequences_keep_one_drawn_seed():
    sampler = Sampler(torch.device("cpu"), (0,), seed=0)
    logits = torch.zeros(1, 4096)  # uniform: the token is the noise's argmax
    seq = make_seq("a", SamplingParams(temperature=1.0), [])
    first = sampler(logits, [seq]).token_ids
    assert sampler(logits, [seq]).token_ids == first  # same sequence, same position: same draw
    other = make_seq("b", SamplingParams(temperature=1.0), [])
    assert sampler(logits, [other]).token_ids != first
    seq.output_token_ids.append(first[0])
    assert sampler(logits, [seq]).token_ids != first


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=GPU)])
def test_plain_rows_hand_the_logits_to_the_kernel_untouched(monkeypatch, device):
    seen = []

    def spy(logits, temperature, seeds, positions):
        seen.append(logits)
        return torch_ops.sample_tokens(logits, temperature, seeds, positions)

    monkeypatch.setattr("engine_service.worker.sampler.dispatch.sample_tokens", spy)
    sampler = Sampler(torch.device(device), (0,), seed=0)
    logits = torch.randn(3, 50, device=device).to(torch.bfloat16)
    before = logits.clone()
    plain = [make_seq(f"r{i}", SamplingParams(temperature=t), []) for i, t in enumerate((0.0, 1.0, 0.8))]
    sampler(logits, plain)
    assert seen[-1] is logits  # bf16 as the LM head made it: no fp32 copy
    top_k = plain[:2] + [make_seq("k", SamplingParams(temperature=1.0, top_k=2), [])]
    tokens = sampler(logits, top_k).token_ids
    assert seen[-1].dtype == torch.float32 and torch.equal(logits, before)  # processed on a copy
    assert tokens[2] in logits[2].float().topk(2).indices.tolist()
    assert torch.isneginf(seen[-1][2]).sum() == 48 and not torch.isneginf(seen[-1][:2]).any()


# ---- GPU: bf16 at real sizes, splits, CUDA graphs ----------------------------------------------------------


def assert_same_or_near_tie(got, want, logits, temperature, seeds, positions):
    """Tokens equal, but for rows where the two tokens' scores tie within float rounding (the GPU's log2
    and fused multiply-adds may round the last bit differently from torch)."""
    rows = (got != want).nonzero()[:, 0]
    assert len(rows) <= max(1, len(got) // 100), rows.tolist()
    for r in rows.tolist():
        u = torch_ops.sampling_uniform(seeds[r : r + 1], positions[r : r + 1], logits.shape[1])[0]
        scores = logits[r].double() * (torch_ops.LOG2E / temperature[r].double()) - torch.log2(
            -torch.log2(u.double())
        )
        a, b = scores[got[r]], scores[want[r]]
        assert abs(float(a - b)) <= 1e-5 * max(1.0, abs(float(a))), (r, float(a), float(b))


@pytest.mark.parametrize("batch", [1, 7, 256])
@pytest.mark.parametrize("num_splits", [None, 1])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_bf16_llama3_vocab(batch, num_splits):
    vocab = 128256
    temperature, seeds, positions = batch_inputs(batch, seed=5, device="cuda")
    logits = (torch.randn(batch, vocab, device="cuda") * 3).to(torch.bfloat16)
    got = ts.sample_tokens(logits, temperature, seeds, positions, num_splits=num_splits)
    want = torch_ops.sample_tokens(logits, temperature, seeds, positions)
    assert_same_or_near_tie(got, want, logits, temperature, seeds, positions)
    u = ts.sampling_uniform(seeds, positions, vocab)
    assert torch.equal(
        u.view(torch.int32), torch_ops.sampling_uniform(seeds, positions, vocab).view(torch.int32)
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_tokens_follow_softmax():
    n, temperature, vocab = 200000, 1.3, 32
    logits = torch.randn(1, vocab, device="cuda") * 2
    seeds = torch.randint(0, 2**63 - 1, (n,), device="cuda")  # many sequences, a few positions each
    positions = torch.arange(n, device="cuda") % 5
    tokens = ts.sample_tokens(
        logits.expand(n, -1), torch.full((n,), temperature, device="cuda"), seeds, positions
    )
    probs = torch.softmax(logits[0].double() / temperature, dim=-1)
    keep = probs * n >= 20  # chi-square wants a few expected draws per cell
    counts = torch.bincount(tokens, minlength=vocab)
    assert chi2(counts[keep], n * probs[keep]) < chi2_bound(int(keep.sum()) - 1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_cuda_graph_replays_with_new_inputs():
    batch, vocab = 64, 128256
    logits = torch.empty(batch, vocab, device="cuda", dtype=torch.bfloat16)
    temperature = torch.empty(batch, device="cuda")
    seeds = torch.empty(batch, dtype=torch.int64, device="cuda")
    positions = torch.empty(batch, dtype=torch.int64, device="cuda")

    def fill(step: int):
        logits.copy_(torch.randn(batch, vocab, device="cuda") * 3)
        t, s, p = batch_inputs(batch, seed=10 + step, device="cuda")
        temperature.copy_(t)
        seeds.copy_(s)
        positions.copy_(p)

    fill(0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ts.sample_tokens(logits, temperature, seeds, positions)  # compile outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ts.sample_tokens(logits, temperature, seeds, positions)
    for step in range(3):
        fill(step)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, ts.sample_tokens(logits, temperature, seeds, positions))
        want = torch_ops.sample_tokens(logits, temperature, seeds, positions)
        assert_same_or_near_tie(out, want, logits, temperature, seeds, positions)
