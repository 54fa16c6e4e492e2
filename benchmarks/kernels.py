"""GPU micro-benchmark of the Triton paged-attention kernels (decode first, with a prefill reference point).

    python -m benchmarks.kernels [--results-dir benchmarks]   # the table below, in about a minute
    python -m benchmarks.kernels --sweep               # also launch shapes and split counts
    python -m benchmarks.kernels --sampling-only       # the sampling rows, in seconds
    python -m benchmarks.kernels --splits-only         # the batch-1 KV split sweep

With --results-dir, one `kernels` row to results.jsonl there (every case below), or with --splits-only one
`attention_splits` row per case; --out also writes the run as one JSON file.

Decode: batch 1 and 256, context 512 and 8k, llama-1b (32 q / 8 kv heads, head_dim 64) and llama-8b (32/8,
head_dim 128) head shapes, bf16, block size 16, blocks shuffled over the cache. The floor is the KV bytes
(each sequence's K and V read once) over the copy bandwidth measured in the same run (a 1 GiB device copy,
bytes read + written). Times are medians:
  - eager: one call, `triton.testing.do_bench` (flushes L2 before each call; the launch gap of the reduce
    kernel is hidden behind the flush, so this is device time);
  - graph: one CUDA graph replaying the call over enough distinct caches to defeat L2, time per call: what a
    decode step under CUDA graphs pays per layer.
A peer on the same card: torch SDPA (flash) on contiguous, unpaged K/V of the same shapes.
Every timed case is also checked against the torch reference in fp32 (rel err column).

Splits (`--splits-only`): llama-8b's batch-1 decode attention at TP=1 (32 q / 8 kv heads) and TP=2 (16 / 4),
context 608 (the throughput benchmark's probe) and 2048, graph time per call (reduce kernel included) for
every KV split count, beside the count `choose_num_kv_splits` picks for a graph bound (max_model_len) of 768
and 2048.

Sampling: `sample_tokens` on bf16 logits [B, 128256] (Llama 3 vocab), B = 1 and 256, every row sampling
(T = 1) or every row greedy, against the sampler's previous torch path (fp32 copy, softmax, exponential race;
`seeded us`: with a torch.Generator draw per row, as seeded requests had). Floor: the logits read once,
B * V * 2 bytes over the copy bandwidth. `mismatch` counts rows whose token differs from torch_ops'
(only a tie in the last bit of a score may cause one). Eager `do_bench` medians.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel

from benchmarks.graph_timing import graph_call_us
from engine_service.ops import torch_ops
from engine_service.ops import triton_attention as ta
from engine_service.ops import triton_sampling as ts
from pagoda.bench.results import git_commit, record_result

# The SDPA peer may use only fused kernels: the math fallback would repeat K/V per query head (GBs).
FUSED_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
SHAPES = {"llama-1b": (32, 8, 64), "llama-8b": (32, 8, 128)}  # q heads, kv heads, head_dim
SPLIT_SHAPES = {"llama-8b": (32, 8, 128), "llama-8b-tp2": (16, 4, 128)}  # per rank at TP=2
BLOCK_SIZE = 16
L2_DEFEAT_BYTES = 256 << 20
SWEEP_SPLITS = [1, 2, 4, 8, 16, 32, 64]
SWEEP_SHORT = [
    ta.AttentionTiles(16, 32, 4, 3),
    ta.AttentionTiles(16, 64, 4, 3),
    ta.AttentionTiles(16, 128, 4, 3),
    ta.AttentionTiles(16, 64, 4, 5),
    ta.AttentionTiles(16, 64, 8, 3),
    ta.AttentionTiles(16, 128, 8, 5),
]
SWEEP_LONG = [
    ta.AttentionTiles(128, 64, 8, 2),
    ta.AttentionTiles(128, 64, 8, 3),
    ta.AttentionTiles(128, 128, 8, 2),
    ta.AttentionTiles(64, 64, 4, 3),
]


def copy_bandwidth() -> float:
    """Bytes/s of a large device-to-device copy (read + write)."""
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


class DecodeCase:
    """One paged decode batch: `copies` disjoint block-table sets over one cache, to rotate through under
    graph timing so the KV comes from DRAM, not L2."""

    def __init__(self, shape: str, batch: int, context: int, copies: int = 1, q_len: int = 1, extra=()):
        heads, kv_heads, dim = SHAPES[shape] if shape in SHAPES else SPLIT_SHAPES[shape]
        self.shape, self.batch, self.context, self.heads, self.kv_heads, self.dim = (
            shape,
            batch,
            context,
            heads,
            kv_heads,
            dim,
        )
        # (q_len, seq_len) per sequence: `batch` decodes (or q_len-query chunks) plus extra entries.
        self.pairs = [(q_len, context)] * batch + list(extra)
        blocks_per_seq = [math.ceil(s / BLOCK_SIZE) for _, s in self.pairs]
        width = max(blocks_per_seq)
        num_blocks = sum(blocks_per_seq)
        g = torch.Generator(device="cuda").manual_seed(0)
        cache_shape = (num_blocks * copies, BLOCK_SIZE, kv_heads, dim)
        self.k_cache = torch.randn(cache_shape, generator=g, device="cuda", dtype=torch.bfloat16)
        self.v_cache = torch.randn(cache_shape, generator=g, device="cuda", dtype=torch.bfloat16)
        self.block_tables = []
        for c in range(copies):
            perm = torch.randperm(num_blocks, generator=g, device="cuda").to(torch.int32) + c * num_blocks
            table = torch.zeros(len(self.pairs), width, dtype=torch.int32, device="cuda")
            used = 0
            for s, n in enumerate(blocks_per_seq):
                table[s, :n] = perm[used : used + n]
                used += n
            self.block_tables.append(table)
        q_lens = [p[0] for p in self.pairs]
        self.q = torch.randn(sum(q_lens), heads, dim, generator=g, device="cuda", dtype=torch.bfloat16)
        self.query_start_loc = torch.tensor([0] + q_lens, device="cuda").cumsum(0).to(torch.int32)
        self.seq_lens = torch.tensor([p[1] for p in self.pairs], dtype=torch.int32, device="cuda")
        self.max_query_len = max(q_lens)
        self.max_seq_len = max(p[1] for p in self.pairs)
        self.out = torch.empty_like(self.q)
        self.kv_bytes = sum(s for _, s in self.pairs) * kv_heads * dim * 2 * 2  # K and V, bf16
        self.scale = dim**-0.5

    def auto_splits(self, bound: int) -> int:
        """The KV split count paged_attention picks for this batch under a bound (max_seq_len) of `bound`."""
        tile = ta.short_tiles(self.heads // self.kv_heads, self.dim).tile_n
        return ta.choose_num_kv_splits(self.batch, self.kv_heads, bound, ta._num_sms(0), tile)

    def call(self, copy: int = 0, **kwargs) -> torch.Tensor:
        return ta._paged_attention(
            self.q,
            self.k_cache,
            self.v_cache,
            self.query_start_loc,
            self.seq_lens,
            self.block_tables[copy],
            self.scale,
            max_query_len=self.max_query_len,
            max_seq_len=self.max_seq_len,
            out=self.out,
            **kwargs,
        )

    def rel_err(self, **kwargs) -> float:
        self.out.fill_(float("nan"))
        got = self.call(**kwargs).double()
        ref = torch_ops.paged_attention(
            self.q.float(),
            self.k_cache,
            self.v_cache,
            self.query_start_loc,
            self.seq_lens,
            self.block_tables[0],
            self.scale,
        ).double()
        return float((got - ref).norm() / ref.norm())

    def eager_us(self, **kwargs) -> float:
        return 1e3 * triton.testing.do_bench(
            lambda: self.call(**kwargs), warmup=25, rep=100, return_mode="median"
        )

    def graph_us(self, reps: int = 20, **kwargs) -> float:
        self.call(**kwargs)  # compile outside the capture
        return graph_call_us(lambda c: self.call(copy=c, **kwargs), len(self.block_tables), reps)


def sdpa_us(case: DecodeCase) -> float | None:
    """torch SDPA (flash) on contiguous K/V of the same shapes: a peer for the decode rows."""
    try:
        q = case.q.view(case.batch, 1, case.heads, case.dim).transpose(1, 2)  # [B, Hq, 1, D]
        k = torch.randn(
            case.batch, case.kv_heads, case.context, case.dim, device="cuda", dtype=torch.bfloat16
        )
        v = torch.randn_like(k)
        f = torch.nn.functional.scaled_dot_product_attention
        with sdpa_kernel(FUSED_SDPA):
            f(q, k, v, enable_gqa=True)
            ms = triton.testing.do_bench(
                lambda: f(q, k, v, enable_gqa=True), warmup=25, rep=100, return_mode="median"
            )
        return ms * 1e3
    except Exception as exc:  # an older torch, or no kernel for this shape: report, don't fail the run
        print(f"  sdpa peer unavailable: {exc}", file=sys.stderr)
        return None


def bench_decode(copy_bw: float, sweep: bool) -> tuple[list[dict], list[dict]]:
    rows, sweeps = [], []
    for shape in SHAPES:
        for batch in (1, 256):
            for context in (512, 8192):
                kv_bytes = batch * context * SHAPES[shape][1] * SHAPES[shape][2] * 4
                copies = max(1, min(256, math.ceil(L2_DEFEAT_BYTES / kv_bytes)))
                case = DecodeCase(shape, batch, context, copies=copies)
                splits = case.auto_splits(context)
                err = case.rel_err()
                eager, graph = case.eager_us(), case.graph_us()
                peer = sdpa_us(case)
                floor_us = case.kv_bytes / copy_bw * 1e6
                rows.append(
                    dict(
                        shape=shape,
                        batch=batch,
                        context=context,
                        num_kv_splits=splits,
                        kv_bytes=case.kv_bytes,
                        eager_us=eager,
                        graph_us=graph,
                        floor_us=floor_us,
                        eager_GBps=case.kv_bytes / eager / 1e3,
                        graph_GBps=case.kv_bytes / graph / 1e3,
                        graph_frac_of_copy=floor_us / graph,
                        sdpa_us=peer,
                        rel_err=err,
                    )
                )
                print(
                    f"decode {shape} b{batch} ctx{context}: eager {eager:.1f} us, graph {graph:.1f} us, "
                    f"floor {floor_us:.1f} us, splits {splits}, err {err:.1e}",
                    file=sys.stderr,
                )
                if sweep:
                    sweeps += sweep_decode(case, copy_bw)
                del case
                torch.cuda.empty_cache()
    return rows, sweeps


def sweep_decode(case: DecodeCase, copy_bw: float) -> list[dict]:
    out = []
    split_list = SWEEP_SPLITS if case.batch * case.kv_heads < 2 * ta._num_sms(0) else [1, 2]
    for splits in split_list:
        if splits > 1 and case.context // splits < 64:
            continue
        us = case.graph_us(num_kv_splits=splits)
        out.append(
            dict(
                case=_name(case),
                knob="num_kv_splits",
                value=splits,
                graph_us=us,
                frac_of_copy=case.kv_bytes / copy_bw * 1e6 / us,
            )
        )
    splits = case.auto_splits(case.context)
    for tiles in SWEEP_SHORT:
        try:
            err = case.rel_err(short=tiles, num_kv_splits=splits)
            us = case.graph_us(short=tiles, num_kv_splits=splits)
        except Exception as exc:  # e.g. out of shared memory for this shape
            out.append(dict(case=_name(case), knob="short", value=str(tiles), error=str(exc)[:200]))
            continue
        out.append(
            dict(
                case=_name(case),
                knob="short",
                value=str(tiles),
                graph_us=us,
                rel_err=err,
                frac_of_copy=case.kv_bytes / copy_bw * 1e6 / us,
            )
        )
    return out


def bench_splits() -> list[dict]:
    """Batch-1 decode attention per KV split count (see the module docstring)."""
    rows = []
    for shape in SPLIT_SHAPES:
        for context in (608, 2048):
            case = DecodeCase(shape, 1, context, copies=64)
            by_splits = {}
            for splits in SWEEP_SPLITS:  # splits past the sequence's end are empty: the graph bound's case
                err = case.rel_err(num_kv_splits=splits)
                if not err < 1e-2:
                    raise AssertionError(f"{shape} ctx {context} splits {splits}: rel err {err}")
                by_splits[str(splits)] = round(case.graph_us(num_kv_splits=splits), 2)
            chosen = {str(bound): case.auto_splits(bound) for bound in (768, 2048)}
            print(
                f"splits {shape} b1 ctx{context}: {by_splits} (chosen for bound: {chosen})", file=sys.stderr
            )
            rows.append(
                dict(shape=shape, batch=1, context=context, graph_us_by_splits=by_splits, chosen=chosen)
            )
            del case
            torch.cuda.empty_cache()
    return rows


def _name(case: DecodeCase) -> str:
    return f"{case.shape} b{case.batch} ctx{case.context}"


def bench_prefill(matmul_flops: float, sweep: bool) -> tuple[list[dict], list[dict]]:
    """One causal prompt per sequence (q_len == seq_len); FLOPs counted for the causal half."""
    rows, sweeps = [], []
    for shape in SHAPES:
        for batch, prompt in ((1, 4096), (8, 1024)):
            case = DecodeCase(shape, batch, prompt, q_len=prompt)
            flops = 2 * 2 * batch * case.heads * case.dim * prompt * (prompt + 1) / 2
            err = case.rel_err()
            us = case.eager_us()
            q = case.q.view(batch, prompt, case.heads, case.dim).transpose(1, 2)
            k = torch.randn(batch, case.kv_heads, prompt, case.dim, device="cuda", dtype=torch.bfloat16)
            f = torch.nn.functional.scaled_dot_product_attention
            try:
                with sdpa_kernel(FUSED_SDPA):
                    peer = 1e3 * triton.testing.do_bench(
                        lambda q=q, k=k, f=f: f(q, k, k, is_causal=True, enable_gqa=True),
                        warmup=25,
                        rep=100,
                        return_mode="median",
                    )
            except Exception as exc:
                print(f"  sdpa peer unavailable: {exc}", file=sys.stderr)
                peer = None
            rows.append(
                dict(
                    shape=shape,
                    batch=batch,
                    prompt=prompt,
                    us=us,
                    tflops=flops / us / 1e6,
                    frac_of_matmul=flops / us / 1e6 / (matmul_flops / 1e12),
                    sdpa_us=peer,
                    rel_err=err,
                )
            )
            print(
                f"prefill {shape} b{batch} x{prompt}: {us:.1f} us, {flops / us / 1e6:.0f} TFLOP/s, "
                f"sdpa {peer}, err {err:.1e}",
                file=sys.stderr,
            )
            if sweep:
                for tiles in SWEEP_LONG:
                    try:
                        t_us = case.eager_us(long=tiles)
                        sweeps.append(
                            dict(
                                case=f"prefill {shape} b{batch} x{prompt}",
                                knob="long",
                                value=str(tiles),
                                us=t_us,
                                tflops=flops / t_us / 1e6,
                            )
                        )
                    except Exception as exc:
                        sweeps.append(
                            dict(
                                case=f"prefill {shape} b{batch} x{prompt}",
                                knob="long",
                                value=str(tiles),
                                error=str(exc)[:200],
                            )
                        )
            del case, q, k
            torch.cuda.empty_cache()
    return rows, sweeps


def bench_mixed(copy_bw: float) -> list[dict]:
    """A chunked-prefill step: 255 decodes at 1k context beside one 1k-token prompt (two launches)."""
    rows = []
    for shape in SHAPES:
        case = DecodeCase(shape, 255, 1024, extra=[(1024, 1024)])
        err = case.rel_err()
        us = case.eager_us()
        decode_only = DecodeCase(shape, 255, 1024)
        decode_us = decode_only.eager_us()
        rows.append(
            dict(
                shape=shape,
                us=us,
                decode_only_us=decode_us,
                floor_us=case.kv_bytes / copy_bw * 1e6,
                rel_err=err,
            )
        )
        del case, decode_only
        torch.cuda.empty_cache()
    return rows


def old_torch_sample(
    logits: torch.Tensor, temperature: torch.Tensor, all_greedy: bool, generators=None
) -> torch.Tensor:
    """The sampler before the fused kernel: fp32 copy, argmax, softmax, exponential race (seeded rows with
    their own generators). `all_greedy` comes from the host, as the sampler knew it from the requests."""
    logits = logits.float()
    argmax = logits.argmax(dim=-1)
    if all_greedy:
        return argmax
    probs = torch.softmax(logits / temperature[:, None], dim=-1)
    q = torch.empty_like(probs).exponential_()
    for i, gen in enumerate(generators or []):
        q[i].exponential_(generator=gen)
    return torch.where(temperature == 0, argmax, (probs / q).argmax(dim=-1))


def bench_sampling(copy_bw: float) -> list[dict]:
    rows = []
    for batch in (1, 256):
        for mode in ("sample", "greedy"):
            rows.append(sampling_row(batch, 128256, mode, copy_bw))
            torch.cuda.empty_cache()
    return rows


def sampling_row(batch: int, vocab: int, mode: str, copy_bw: float) -> dict:
    logits = (torch.randn(batch, vocab, device="cuda") * 3).to(torch.bfloat16)
    temperature = torch.full((batch,), 1.0 if mode == "sample" else 0.0, device="cuda")
    seeds = torch.randint(0, 2**63 - 1, (batch,), device="cuda")
    positions = torch.randint(0, 4096, (batch,), device="cuda")
    generators = [torch.Generator(device="cuda").manual_seed(i) for i in range(batch)]
    fused = ts.sample_tokens(logits, temperature, seeds, positions)
    mismatch = int((fused != torch_ops.sample_tokens(logits, temperature, seeds, positions)).sum())

    def bench(fn) -> float:
        return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")

    fused_us = bench(lambda: ts.sample_tokens(logits, temperature, seeds, positions))
    greedy = mode == "greedy"
    torch_us = bench(lambda: old_torch_sample(logits, temperature, greedy))
    seeded_us = None if greedy else bench(lambda: old_torch_sample(logits, temperature, greedy, generators))
    floor_us = batch * vocab * 2 / copy_bw * 1e6
    print(
        f"sampling b{batch} {mode}: fused {fused_us:.1f} us, torch {torch_us:.1f} us, "
        f"floor {floor_us:.1f} us, mismatch {mismatch}",
        file=sys.stderr,
    )
    return dict(
        batch=batch,
        vocab=vocab,
        mode=mode,
        num_splits=ts.choose_num_splits(batch, vocab, ts._num_sms(0)),
        fused_us=fused_us,
        torch_us=torch_us,
        torch_seeded_us=seeded_us,
        floor_us=floor_us,
        frac_of_copy=floor_us / fused_us,
        mismatch=mismatch,
    )


def matmul_rate() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=200, return_mode="median")
    return 2 * 8192**3 / (ms * 1e-3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="also write the run's results to this JSON file")
    parser.add_argument("--sweep", action="store_true", help="also sweep split counts and launch shapes")
    parser.add_argument("--no-prefill", action="store_true", help="decode rows only")
    parser.add_argument("--sampling-only", action="store_true", help="only the sampling rows")
    parser.add_argument("--splits-only", action="store_true", help="only the batch-1 KV split sweep")
    parser.add_argument("--results-dir", help="append the results to DIR/results.jsonl")
    parser.add_argument("--commit", default=None, help="recorded in the rows (default: git rev-parse HEAD)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    commit = args.commit or git_commit()
    if args.splits_only:
        rows = bench_splits()
        if args.out:
            Path(args.out).write_text(json.dumps(rows, indent=1))
        if args.results_dir:
            stamp = dict(kind="attention_splits", date=datetime.now(UTC).isoformat(timespec="seconds"))
            card = dict(card=torch.cuda.get_device_name(), commit=commit)
            for row in rows:
                record_result({**stamp, **card, **row}, args.results_dir)
        return 0

    started = time.time()
    copy_bw, mm = copy_bandwidth(), matmul_rate()
    attention = not args.sampling_only
    decode, decode_sweep = bench_decode(copy_bw, args.sweep) if attention else ([], [])
    prefill, prefill_sweep = bench_prefill(mm, args.sweep) if attention and not args.no_prefill else ([], [])
    mixed = bench_mixed(copy_bw) if attention and not args.no_prefill else []
    sampling = bench_sampling(copy_bw)
    result = dict(
        kind="kernels",
        date=datetime.now(UTC).isoformat(timespec="seconds"),
        commit=commit,
        card=torch.cuda.get_device_name(),
        num_sms=ta._num_sms(0),
        torch=torch.__version__,
        triton=triton.__version__,
        copy_GBps=copy_bw / 1e9,
        matmul_TFLOPs=mm / 1e12,
        decode=decode,
        prefill=prefill,
        mixed=mixed,
        sampling=sampling,
        sweep=decode_sweep + prefill_sweep,
        wall_s=time.time() - started,
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.results_dir:
        record_result(result, args.results_dir)

    print(
        f"\n{result['card']}: copy {copy_bw / 1e9:.0f} GB/s, bf16 matmul {mm / 1e12:.0f} TFLOP/s, "
        f"triton {triton.__version__}"
    )
    print(
        "| shape | batch | ctx | splits | eager us | graph us | floor us | GB/s | of copy | sdpa us | err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in decode:
        sdpa = f"{r['sdpa_us']:.1f}" if r["sdpa_us"] else "-"
        print(
            f"| {r['shape']} | {r['batch']} | {r['context']} | {r['num_kv_splits']} | {r['eager_us']:.1f} | "
            f"{r['graph_us']:.1f} | {r['floor_us']:.1f} | {r['graph_GBps']:.0f} | "
            f"{r['graph_frac_of_copy']:.2f} | "
            f"{sdpa} | {r['rel_err']:.1e} |"
        )
    for r in prefill:
        sdpa = f"{r['sdpa_us']:.0f}" if r["sdpa_us"] else "-"
        print(
            f"prefill {r['shape']} {r['batch']}x{r['prompt']}: {r['us']:.0f} us, {r['tflops']:.0f} TFLOP/s "
            f"({r['frac_of_matmul']:.2f} of matmul), sdpa {sdpa} us, err {r['rel_err']:.1e}"
        )
    for r in mixed:
        print(
            f"mixed {r['shape']} 255 decodes@1k + 1x1k prompt: {r['us']:.0f} us (decodes alone "
            f"{r['decode_only_us']:.0f} us, KV floor {r['floor_us']:.0f} us), err {r['rel_err']:.1e}"
        )
    if sampling:
        print("| batch | mode | splits | fused us | floor us | of copy | torch us | seeded us | mismatch |")
        print("|---|---|---|---|---|---|---|---|---|")
    for r in sampling:
        seeded = f"{r['torch_seeded_us']:.0f}" if r["torch_seeded_us"] else "-"
        print(
            f"| {r['batch']} | {r['mode']} | {r['num_splits']} | {r['fused_us']:.1f} | {r['floor_us']:.1f} | "
            f"{r['frac_of_copy']:.2f} | {r['torch_us']:.1f} | {seeded} | {r['mismatch']} |"
        )
    if result["sweep"]:
        best: dict[str, dict] = {}
        for r in result["sweep"]:
            t = r.get("graph_us", r.get("us"))
            key = f"{r['case']} {r['knob']}"
            if t is not None and (key not in best or t < best[key].get("graph_us", best[key].get("us"))):
                best[key] = r
        for key, r in sorted(best.items()):
            print(f"best {key}: {r['value']} -> {r.get('graph_us', r.get('us')):.1f} us")
    print(f"done in {result['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
