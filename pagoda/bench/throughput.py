"""`pagoda bench throughput`: offline, in-process throughput of Pagoda on random weights, beside its peers.

    pagoda bench throughput --shape llama-1b --workload fixed --peer vllm --peer hf

One invocation measures one configuration (shape x workload x prefix caching):
  1. the card's two ceilings (bf16 matrix rate, copy bandwidth), before any engine holds memory;
  2. each peer in a subprocess of its own, one after another (pagoda/bench/peers.py);
  3. Pagoda in this process: `LLM(load_format="dummy")`, an untimed warm-up, one timed `generate` of the
     whole workload (EOS ignored), per-request TTFT / TPOT from the outputs' metrics, and the decode step
     at batch 1 and 256 (workloads.probe_decode_steps);
  4. the roofline floor of the same work (roofline.py) -> efficiency of every engine;
then prints a summary, and with --results-dir appends the record to <results-dir>/results.jsonl
(pagoda.bench.results). The vLLM peer needs vLLM in this Python environment, or in the folder that
--vllm-site names (for instance vLLM's wheels unpacked on a machine without network).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine_service.core.config import EngineConfig
from pagoda.bench import report, roofline, shapes, workloads
from pagoda.bench.peers import PeerJob, run_worker, subprocess_env
from pagoda.bench.results import git_commit, record_result
from pagoda.bench.workloads import WorkloadSpec
from pagoda.cli_args import add_config_args

# peer flag -> (result key, worker module, mode)
PEERS: dict[str, list[tuple[str, str, str]]] = {
    "vllm": [("vllm", "pagoda.bench.peer_vllm", "")],
    "hf": [("hf_static", "pagoda.bench.peer_hf", "static"), ("hf_cb", "pagoda.bench.peer_hf", "cb")],
}

# vLLM offline on dummy weights: no hub, no usage report, its torch sampler (FlashInfer's is optional and
# absent where vLLM runs from unpacked wheels), its compile cache in /tmp.
VLLM_ENV = {
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TVM_FFI_DISABLE_TORCH_C_DLPACK": "1",
    "VLLM_CACHE_ROOT": "/tmp/vllm_cache",
    "PYTHONUNBUFFERED": "1",
}

BLOCK_SIZE = 16  # Pagoda's and vLLM's KV block: a cached prefix is whole blocks
ENGINE_FLAGS = (
    "device",
    "dtype",
    "enable_prefix_caching",
    "gpu_memory_utilization",
    "enforce_eager",
    "tensor_parallel_size",
    "custom_all_reduce",
    "pdl",
    "quantization",
    "kv_cache_dtype",
)


@dataclass(frozen=True)
class BenchConfig:
    shape: str
    workload: WorkloadSpec
    prefix_caching: bool
    peers: tuple[str, ...]
    device: str  # cpu | cuda (resolved)
    dtype: str
    max_num_seqs: int
    max_num_batched_tokens: int
    peer_max_num_seqs: int | None  # given explicitly: peers use it too; else each peer keeps its default
    peer_max_num_batched_tokens: int | None
    tensor_parallel_size: int
    custom_all_reduce: bool
    pdl: bool
    quantization: str | None  # fp8: a 16-bit shape quantized on load (vLLM's peer gets the same)
    kv_cache_dtype: str  # auto | fp8 (vLLM's peer gets the same)
    gpu_memory_utilization: float
    temperature: float
    enforce_eager: bool
    decode_batch_sizes: tuple[int, ...]
    decode_tokens: tuple[int, int]
    model_dir: str
    results_dir: str | None
    out_json: str | None
    commit: str
    hf_num_prompts: int
    hf_batch_size: int
    peer_timeout_s: float
    vllm_site: str | None  # a folder holding vLLM and its packages; None: this environment's vLLM

    @property
    def max_model_len(self) -> int:
        spec = self.workload
        return max(spec.max_prompt_len + spec.max_output_len, spec.input_len + self.decode_tokens[1])


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="pagoda bench throughput",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--shape", default="llama-1b", choices=list(shapes.SHAPES))
    p.add_argument("--workload", default="fixed", choices=workloads.WORKLOADS)
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument(
        "--input-len",
        type=int,
        default=512,
        help="prompt tokens (random: the middle of the range; shared-prefix: tokens after the prefix)",
    )
    p.add_argument(
        "--output-len", type=int, default=256, help="generated tokens (random: middle of the range)"
    )
    p.add_argument(
        "--range-ratio", type=float, default=0.5, help="random: lengths uniform in [len*(1-r), len*(1+r)]"
    )
    p.add_argument(
        "--prefix-len", type=int, default=1024, help="shared-prefix: tokens every prompt starts with"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--peer",
        action="append",
        choices=list(PEERS),
        default=[],
        help="also run this engine on the same workload (repeatable)",
    )
    # The engine settings a run shares with `pagoda engine`: flags made from EngineConfig's fields.
    add_config_args(
        p,
        EngineConfig,
        only=ENGINE_FLAGS,
        defaults={"dtype": "bfloat16"},  # the roofline needs a real dtype: no "auto"
        choices={"dtype": ["bfloat16", "float16", "float32"]},
    )
    p.add_argument(
        "--max-num-seqs", type=int, default=None, help="default: Pagoda's 512; peers keep their own"
    )
    p.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="default 16384 (as vLLM's offline LLM); peers keep their own",
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument(
        "--decode-batch-sizes",
        type=_int_list,
        default=(1, 256),
        help="decode-step probe batch sizes, comma-separated (empty: no probe)",
    )
    p.add_argument(
        "--decode-tokens", type=_int_list, default=(32, 160), help="the probe's short and long output lengths"
    )
    p.add_argument(
        "--model-dir",
        default=None,
        help="where to write the weight-less model folder (default: /tmp/pagoda-bench/<shape>)",
    )
    p.add_argument("--results-dir", default=None, help="append the record to DIR/results.jsonl")
    p.add_argument("--out-json", default=None, help="also write this configuration's record here")
    p.add_argument("--commit", default=None, help="commit to record (default: git rev-parse HEAD)")
    p.add_argument(
        "--hf-num-prompts",
        type=int,
        default=256,
        help="HF peers run only the first N prompts (they are slow)",
    )
    p.add_argument("--hf-batch-size", type=int, default=64, help="HF static generate: prompts per call")
    p.add_argument("--peer-timeout", type=float, default=900.0, help="seconds before a peer is given up")
    p.add_argument(
        "--vllm-site",
        default=None,
        help="--peer vllm: a folder holding vLLM and its packages, put first on the peer's path "
        "(default: the vLLM installed in this Python environment)",
    )
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> BenchConfig:
    if len(args.decode_tokens) != 2 or args.decode_tokens[0] >= args.decode_tokens[1]:
        raise SystemExit("--decode-tokens takes SHORT,LONG with SHORT < LONG")
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    spec = WorkloadSpec(
        name=args.workload,
        num_prompts=args.num_prompts,
        input_len=args.input_len,
        output_len=args.output_len,
        range_ratio=args.range_ratio,
        prefix_len=args.prefix_len,
        seed=args.seed,
    )
    return BenchConfig(
        shape=args.shape,
        workload=spec,
        prefix_caching=args.enable_prefix_caching,
        peers=tuple(dict.fromkeys(args.peer)),
        device=device,
        dtype=args.dtype,
        max_num_seqs=args.max_num_seqs or 512,
        max_num_batched_tokens=args.max_num_batched_tokens or 16384,  # vLLM's offline default too
        peer_max_num_seqs=args.max_num_seqs,
        peer_max_num_batched_tokens=args.max_num_batched_tokens,
        tensor_parallel_size=args.tensor_parallel_size,
        custom_all_reduce=args.custom_all_reduce,
        pdl=args.pdl,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        temperature=args.temperature,
        enforce_eager=args.enforce_eager,
        decode_batch_sizes=tuple(args.decode_batch_sizes),
        decode_tokens=tuple(args.decode_tokens),
        model_dir=args.model_dir or f"/tmp/pagoda-bench/{args.shape}",
        results_dir=args.results_dir or None,
        out_json=args.out_json,
        commit=args.commit or git_commit(),
        hf_num_prompts=args.hf_num_prompts,
        hf_batch_size=args.hf_batch_size,
        peer_timeout_s=args.peer_timeout,
        vllm_site=args.vllm_site,
    )


# --- the engines --------------------------------------------------------------------------------------------


def run_pagoda(config: BenchConfig, requests: list[workloads.Request], vocab_size: int) -> dict[str, Any]:
    """Pagoda's offline run in this process; its GPU memory is given back before returning (a later run
    in this process, or a server it starts, needs the card)."""
    from engine_service import LLM

    extra = {}
    if config.tensor_parallel_size > 1:
        extra["tensor_parallel_size"] = config.tensor_parallel_size
        extra["custom_all_reduce"] = config.custom_all_reduce
    started = time.perf_counter()
    llm = LLM(
        model=config.model_dir,
        device=config.device,
        dtype=config.dtype,
        load_format="dummy",
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        enable_prefix_caching=config.prefix_caching,
        gpu_memory_utilization=config.gpu_memory_utilization,
        enforce_eager=config.enforce_eager,
        pdl=config.pdl,
        quantization=config.quantization,
        kv_cache_dtype=config.kv_cache_dtype,
        seed=config.workload.seed,
        **extra,
    )
    startup_s = time.perf_counter() - started
    try:
        return _measure_pagoda(llm, config, requests, vocab_size, startup_s)
    finally:
        llm.engine.shutdown()
        del llm
        gc.collect()  # the engine's objects hold reference cycles: free its tensors now
        if config.device == "cuda":
            import torch

            torch.cuda.empty_cache()


def _measure_pagoda(llm, config: BenchConfig, requests, vocab_size: int, startup_s: float) -> dict[str, Any]:
    from engine_service import SamplingParams

    def generate(prompts: list[list[int]], max_tokens: list[int]):
        params = [
            SamplingParams(max_tokens=m, temperature=config.temperature, ignore_eos=True) for m in max_tokens
        ]
        t0 = time.perf_counter()
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        return time.perf_counter() - t0, outs

    spec = config.workload
    generate(workloads.warmup_prompts(8, spec.input_len, vocab_size), [min(16, spec.output_len)] * 8)
    steps0 = llm.engine.stats().num_steps
    elapsed_s, outs = generate([r.prompt_token_ids for r in requests], [r.max_tokens for r in requests])
    num_steps = llm.engine.stats().num_steps - steps0

    ttft, tpot = [], []
    for o in outs:
        m, n = o.metrics, len(o.outputs[0].token_ids)
        if m is None or m.first_token_time is None or m.finished_time is None:
            continue
        ttft.append(m.first_token_time - m.arrival_time)
        if n > 1:
            tpot.append((m.finished_time - m.first_token_time) / (n - 1))
    batch_sizes = [b for b in config.decode_batch_sizes if b <= config.max_num_seqs]
    decode = workloads.probe_decode_steps(
        lambda p, m: generate(p, [m] * len(p))[0],
        batch_sizes,
        config.decode_tokens,
        spec.input_len,
        vocab_size,
    )
    return report.engine_result(
        engine="pagoda",
        startup_s=startup_s,
        elapsed_s=elapsed_s,
        num_prompts=len(requests),
        num_prompt_tokens=sum(len(o.prompt_token_ids) for o in outs),
        num_output_tokens=sum(len(c.token_ids) for o in outs for c in o.outputs),
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        ttft_s=ttft,
        tpot_s=tpot,
        decode_step_ms=decode,
        num_cached_tokens=sum(o.num_cached_tokens for o in outs),
        num_steps=num_steps,
    )


def peer_env(peer: str, config: BenchConfig) -> dict[str, str]:
    if peer != "vllm":
        return subprocess_env()
    env = subprocess_env(*([config.vllm_site] if config.vllm_site else []))
    env.update(VLLM_ENV)
    return env


def vllm_missing(site: str | None) -> str | None:
    """Why the vLLM peer cannot start, or None: vLLM must be in `site`, or importable here without one."""
    if site is not None:
        if Path(site, "vllm", "__init__.py").is_file():
            return None
        return f"vLLM is not in {site}: unpack vLLM and its packages there, or leave --vllm-site out"
    if importlib.util.find_spec("vllm") is not None:
        return None
    return "vLLM is not installed in this Python environment: install it, or pass --vllm-site DIR"


def run_peers(config: BenchConfig, vocab_size: int) -> dict[str, dict[str, Any]]:
    results = {}
    for peer in config.peers:
        for key, module, mode in PEERS[peer]:
            is_hf = peer == "hf"
            job = PeerJob(
                model_dir=config.model_dir,
                device=config.device,
                workload=config.workload.to_dict(),
                vocab_size=vocab_size,
                prefix_caching=config.prefix_caching,
                dtype=config.dtype,
                temperature=config.temperature,
                max_model_len=config.max_model_len,
                gpu_memory_utilization=config.gpu_memory_utilization,
                max_num_seqs=config.peer_max_num_seqs,
                max_num_batched_tokens=config.peer_max_num_batched_tokens,
                decode_batch_sizes=config.decode_batch_sizes,
                decode_tokens=config.decode_tokens,
                num_prompts=min(config.hf_num_prompts, config.workload.num_prompts)
                if is_hf
                else config.workload.num_prompts,
                batch_size=config.hf_batch_size,
                tensor_parallel_size=config.tensor_parallel_size,
                quantization=config.quantization,
                kv_cache_dtype=config.kv_cache_dtype,
                mode=mode,
                seed=config.workload.seed,
            )
            missing = vllm_missing(config.vllm_site) if peer == "vllm" else None
            if missing:
                results[key] = {"error": missing}
                continue
            print(f"[bench] peer {key} on {job.num_prompts} prompts", file=sys.stderr, flush=True)
            results[key] = run_worker(module, job, peer_env(peer, config), config.peer_timeout_s)
    return results


# --- the roofline -------------------------------------------------------------------------------------------


def request_work(config: BenchConfig, requests: list[workloads.Request]) -> list[roofline.RequestWork]:
    """Each request's prompt, output and (with prefix caching) cached tokens: in the shared-prefix workload
    every request after the first finds the prefix's whole blocks in the cache."""
    cached = (config.workload.shared_prefix_len // BLOCK_SIZE * BLOCK_SIZE) if config.prefix_caching else 0
    return [
        roofline.RequestWork(len(r.prompt_token_ids), r.max_tokens, cached if i > 0 else 0)
        for i, r in enumerate(requests)
    ]


def attach_efficiency(
    result: dict[str, Any],
    config: BenchConfig,
    dims: roofline.ModelDims,
    requests: list[workloads.Request],
    ceilings: roofline.Ceilings,
) -> None:
    """Add this engine's floor and efficiency: the same work under the engine's own batch limits."""
    if "error" in result:
        return
    subset = requests[: result["num_prompts"]]
    work = roofline.count_work(
        dims,
        request_work(config, subset),
        result["max_num_seqs"] or len(subset),
        result["max_num_batched_tokens"] or 1 << 62,
    )
    floor = roofline.time_floor(work, ceilings)
    result["floor_s"] = round(floor.seconds, 4)
    result["efficiency"] = round(roofline.efficiency(floor, result["elapsed_s"]), 4)


def roofline_summary(
    config: BenchConfig,
    dims: roofline.ModelDims,
    requests: list[workloads.Request],
    ceilings: roofline.Ceilings,
) -> dict[str, Any]:
    work = roofline.count_work(
        dims, request_work(config, requests), config.max_num_seqs, config.max_num_batched_tokens
    )
    floor = roofline.time_floor(work, ceilings)
    return {
        "matmul_tflops": round(ceilings.matmul_flops_per_s / 1e12, 1),
        "copy_tb_s": round(ceilings.copy_bytes_per_s / 1e12, 3),
        "tflop": round(work.flops / 1e12, 2),
        "weight_gb": round(work.weight_bytes / 1e9, 1),
        "kv_read_gb": round(work.kv_read_bytes / 1e9, 1),
        "num_steps": work.num_steps,
        "compute_s": round(floor.compute_s, 4),
        "memory_s": round(floor.memory_s, 4),
        "floor_s": round(floor.seconds, 4),
        "out_tok_s_limit": round(work.num_output_tokens / floor.seconds, 1),
    }


def decode_floors_ms(
    config: BenchConfig, dims: roofline.ModelDims, ceilings: roofline.Ceilings
) -> dict[str, float]:
    short, long = config.decode_tokens
    context = config.workload.input_len + (short + long) // 2  # the probe's mean context over its timed steps
    return {
        str(b): round(roofline.decode_step_floor(dims, b, context, ceilings).seconds * 1e3, 4)
        for b in config.decode_batch_sizes
    }


# --- main ---------------------------------------------------------------------------------------------------


def card_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return "cpu"


def build_record(
    config: BenchConfig,
    pagoda: dict[str, Any],
    peers: dict[str, Any],
    roof: dict[str, Any] | None,
    floors: dict[str, float],
) -> dict[str, Any]:
    steps = pagoda.get("decode_step_ms", {})
    settings = {
        k: v
        for k, v in asdict(config).items()
        if k not in ("workload", "shape", "commit", "results_dir", "out_json", "model_dir")
    }
    return {
        "kind": "throughput",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "card": card_name(config.device),
        "commit": config.commit,
        "shape": config.shape,
        "workload": config.workload.to_dict(),
        "prefix_caching": config.prefix_caching,
        "out_tok_s": pagoda.get("out_tok_s"),
        "total_tok_s": pagoda.get("total_tok_s"),
        "efficiency": pagoda.get("efficiency"),
        "itl_bs1_ms": steps.get("1"),
        "itl_bs1_floor_ms": floors.get("1"),
        "itl_bs256_ms": steps.get("256"),
        "itl_bs256_floor_ms": floors.get("256"),
        "startup_s": pagoda.get("startup_s"),
        "ttft_ms": pagoda.get("ttft_ms"),
        "tpot_ms": pagoda.get("tpot_ms"),
        "roofline": roof,
        "pagoda": pagoda,
        "peer": peers,
        "settings": settings,
    }


def _cell(value: float | None, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def print_summary(record: dict[str, Any]) -> None:
    rows = [("pagoda", record["pagoda"])] + list(record["peer"].items())
    print(
        f"\n{record['shape']} | {report.workload_label(record['workload'], record['prefix_caching'])} | "
        f"{record['card']}"
    )
    if record["roofline"]:
        r = record["roofline"]
        print(
            f"roofline: {r['matmul_tflops']} TFLOP/s, {r['copy_tb_s']} TB/s -> floor {r['floor_s']} s "
            f"(compute {r['compute_s']} s, memory {r['memory_s']} s), {r['out_tok_s_limit']:,.0f} out tok/s"
        )
    print(
        f"{'engine':<10} {'out tok/s':>10} {'total tok/s':>12} {'eff':>6} {'bs1 ms':>8} {'bs256 ms':>9} "
        f"{'start s':>8}"
    )
    for name, r in rows:
        if "error" in r:
            print(f"{name:<10} error: {r['error']}")
            continue
        steps = r.get("decode_step_ms", {})
        cells = [
            _cell(r.get("efficiency"), "6.3f"),
            _cell(steps.get("1"), "8.2f"),
            _cell(steps.get("256"), "9.2f"),
        ]
        print(
            f"{name:<10} {r['out_tok_s']:>10,.0f} {r['total_tok_s']:>12,.0f} {' '.join(cells)} "
            f"{_cell(r.get('startup_s'), '8.1f')}"
        )
    floors = (record["itl_bs1_floor_ms"], record["itl_bs256_floor_ms"])
    if floors[0] is not None:
        print(
            f"{'floor':<10} {'':>10} {'':>12} {'':>6} {_cell(floors[0], '8.2f')} {_cell(floors[1], '9.2f')}"
        )


def main(argv: list[str] | None = None) -> int:
    config = build_config(parse_args(list(sys.argv[1:] if argv is None else argv)))
    model_config = shapes.shape_config(config.shape)
    vocab_size = model_config["vocab_size"]
    dims = roofline.ModelDims.from_config(model_config)
    shapes.write_model_dir(config.shape, config.model_dir)
    requests = workloads.build(config.workload, vocab_size)

    ceilings = None
    if config.device == "cuda":
        measured = roofline.measure_ceilings()
        tp = config.tensor_parallel_size  # the other cards are taken to match the one measured
        ceilings = roofline.Ceilings(measured.matmul_flops_per_s * tp, measured.copy_bytes_per_s * tp)
        print(
            f"[bench] ceilings: {measured.matmul_flops_per_s / 1e12:.0f} TFLOP/s, "
            f"{measured.copy_bytes_per_s / 1e12:.2f} TB/s (one card)",
            file=sys.stderr,
            flush=True,
        )

    peers = run_peers(config, vocab_size)
    print(f"[bench] pagoda on {len(requests)} prompts", file=sys.stderr, flush=True)
    try:
        pagoda = run_pagoda(config, requests, vocab_size)
    except Exception as e:  # recorded, like a failing peer: the peers' figures still count
        import traceback

        traceback.print_exc()
        pagoda = {"error": f"{type(e).__name__}: {e}"}

    roof, floors = None, {}
    if ceilings is not None:
        for result in [pagoda, *peers.values()]:
            attach_efficiency(result, config, dims, requests, ceilings)
        roof = roofline_summary(config, dims, requests, ceilings)
        floors = decode_floors_ms(config, dims, ceilings)
    record = build_record(config, pagoda, peers, roof, floors)
    if config.results_dir:
        record_result(record, config.results_dir)
    if config.out_json:
        Path(config.out_json).write_text(json.dumps(record, indent=2) + "\n")
    print_summary(record)
    return 1 if "error" in pagoda else 0
