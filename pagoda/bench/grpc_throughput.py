"""`pagoda bench grpc`: the offline throughput workload, driven through the engine gRPC service.

    pagoda bench grpc --shape llama-1b --concurrency 256 --engine-core thread --engine-core process

Takes every flag of `pagoda bench throughput` (shape, workload, batch limits; peers are ignored), plus
the ones below. For each --engine-core it starts `python -m engine_service` on random weights with the
same settings as the offline run, waits for health SERVING, sends an untimed warm-up, then streams the
whole workload over --concurrency concurrent Generate calls (token-id prompts, EOS ignored) and stops
the server with SIGTERM. Then, unless --no-offline, it runs the offline `LLM.generate` on the same
workload in this process (pagoda.bench.throughput.run_pagoda), as configured and, when the configured
batch limit (max_num_seqs, 512 by default) is above --concurrency, again with max_num_seqs at the streams'
count: the service never has more requests to batch than there are streams, while the offline run queues
every prompt at once. The figures of merit are the ratios of generated tokens per second, gRPC / offline
and gRPC / offline at the same batch limit. With --results-dir, one record per engine core is appended to
results.jsonl there (pagoda.bench.results).

--metrics-port turns the engine's Prometheus metrics on (scraped every --scrape-interval seconds during the
run, as Prometheus would) and --otlp-endpoint its tracing: benchmarks/observability_overhead.py compares
both on against both off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pagoda.bench import engine_server, grpc_client, report, shapes, throughput, workloads
from pagoda.bench.results import record_result


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, throughput.BenchConfig]:
    p = argparse.ArgumentParser(
        prog="pagoda bench grpc",
        description="The offline throughput workload through the engine gRPC service (plus every flag of "
        "`pagoda bench throughput`).",
    )
    p.add_argument("--concurrency", type=int, default=256, help="concurrent Generate streams")
    p.add_argument(
        "--engine-core",
        action="append",
        choices=("thread", "process"),
        default=[],
        help="where the engine loop runs (repeatable; default: process)",
    )
    p.add_argument("--channels", type=int, default=8, help="client connections the streams are spread over")
    p.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="processes the streams are dealt out over (one Python process can fall behind the engine)",
    )
    p.add_argument("--stream-interval", type=int, default=1, help="the engine's --stream-interval")
    p.add_argument("--no-offline", action="store_true", help="skip the offline run (no ratio)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of (gRPC runs, offline run), each round recorded with its own ratio: adjacent runs "
        "see the same state of a shared machine",
    )
    p.add_argument("--start-timeout", type=float, default=600.0, help="seconds for the server to be SERVING")
    p.add_argument("--metrics-port", type=int, default=0, help="the engine's metrics port (0: metrics off)")
    p.add_argument(
        "--scrape-interval", type=float, default=1.0, help="seconds between scrapes of /metrics in the run"
    )
    p.add_argument("--otlp-endpoint", default=None, help="the engine exports traces here (default: off)")
    args, rest = p.parse_known_args(argv)
    if min(args.concurrency, args.channels, args.repeat, args.client_processes) < 1:
        p.error("--concurrency, --channels, --client-processes and --repeat must be at least 1")
    args.engine_core = list(dict.fromkeys(args.engine_core or ["process"]))
    if not any(a.startswith("--decode-batch-sizes") for a in rest):
        rest += ["--decode-batch-sizes", ""]  # the offline run's decode-step probe is not what we compare
    return args, throughput.build_config(throughput.parse_args(rest))


# ---- the client --------------------------------------------------------------------------------------------


def grpc_result(
    core: str,
    config: throughput.BenchConfig,
    args: argparse.Namespace,
    requests,
    elapsed: float,
    stats: list[grpc_client.StreamStats],
    startup_s: float,
    occupancy: dict[str, Any],
) -> dict[str, Any]:
    errors = [e for s in stats for e in s.errors]
    incomplete = sum(s.num_tokens != r.max_tokens for s, r in zip(stats, requests, strict=True))
    ttft = [s.first - s.sent for s in stats if s.first is not None]
    tpot = [
        (s.last - s.first) / (s.num_tokens - 1) for s in stats if s.first is not None and s.num_tokens > 1
    ]
    num_messages = sum(s.num_messages for s in stats)
    num_tokens = sum(s.num_tokens for s in stats)
    return report.engine_result(
        engine=f"pagoda-grpc-{core}",
        startup_s=startup_s,
        elapsed_s=elapsed,
        num_prompts=len(requests),
        num_prompt_tokens=sum(len(r.prompt_token_ids) for r in requests),
        num_output_tokens=num_tokens,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        ttft_s=ttft,
        tpot_s=tpot,
        engine_core=core,
        stream_interval=args.stream_interval,
        concurrency=args.concurrency,
        channels=args.channels,
        client_processes=args.client_processes,
        occupancy=occupancy,
        num_messages=num_messages,
        messages_per_s=round(num_messages / elapsed, 1),
        tokens_per_message=round(num_tokens / max(num_messages, 1), 2),
        num_incomplete=incomplete,
        num_errors=len(errors),
        first_errors=errors[:5],
    )


def run_grpc(
    core: str, config: throughput.BenchConfig, args: argparse.Namespace, requests, vocab_size: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    server = engine_server.EngineProcess(
        engine_server.server_command(
            config, core, args.stream_interval, args.metrics_port, args.otlp_endpoint
        )
    )
    address = f"127.0.0.1:{server.port}"
    scraper = engine_server.Scraper(args.metrics_port, args.scrape_interval) if args.metrics_port else None
    try:
        asyncio.run(grpc_client.wait_serving(address, args.start_timeout))
        startup_s = time.perf_counter() - t0
        spec = config.workload
        warm = [
            workloads.Request(p, min(16, spec.output_len))
            for p in workloads.warmup_prompts(8, spec.input_len, vocab_size)
        ]
        grpc_client.drive(address, warm, config.temperature, args.concurrency, args.channels)
        cpu0 = engine_server.tree_cpu_s(server.proc.pid)
        with scraper or contextlib.nullcontext(), grpc_client.Occupancy(address) as occupancy:
            elapsed, stats = grpc_client.drive(
                address,
                requests,
                config.temperature,
                args.concurrency,
                args.channels,
                args.client_processes,
            )
        cpu1 = engine_server.tree_cpu_s(server.proc.pid)
    finally:
        status = server.stop()
    result = grpc_result(core, config, args, requests, elapsed, stats, startup_s, occupancy.summary())
    result["server_exit_status"] = status
    # The engine's processes (front and loop) during the timed run: the cost of the work, less sensitive
    # than the wall clock to other load on a shared machine.
    result["engine_cpu_s"] = round(cpu1 - cpu0, 3) if cpu0 is not None and cpu1 is not None else None
    result["observability"] = {
        "metrics": bool(args.metrics_port),
        "tracing": bool(args.otlp_endpoint),
        "num_scrapes": scraper.num_scrapes if scraper else 0,
        "scrape_errors": scraper.errors if scraper else 0,
    }
    return result


# ---- results -----------------------------------------------------------------------------------------------


def _ratio(grpc: dict[str, Any], offline: dict[str, Any] | None) -> float | None:
    if offline and "error" not in offline and "error" not in grpc:
        return round(grpc["out_tok_s"] / offline["out_tok_s"], 4)
    return None


def build_record(
    config: throughput.BenchConfig,
    args: argparse.Namespace,
    grpc: dict[str, Any],
    offline: dict[str, Any] | None,
    same_batch: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`offline`: the offline run as configured; `same_batch`: the offline run with max_num_seqs at the
    streams' count (None when that is the configured limit already: `offline` is then that run too)."""
    ratio = _ratio(grpc, offline)
    if same_batch is None and config.max_num_seqs <= args.concurrency:
        same_batch = offline
    return {
        "kind": "grpc",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "card": throughput.card_name(config.device),
        "commit": config.commit,
        "shape": config.shape,
        "workload": config.workload.to_dict(),
        "prefix_caching": config.prefix_caching,
        "engine_core": grpc.get("engine_core"),
        "concurrency": args.concurrency,
        "observability": grpc.get("observability"),
        "out_tok_s": grpc.get("out_tok_s"),
        "offline_out_tok_s": offline.get("out_tok_s") if offline else None,
        "ratio": ratio,
        "offline_same_batch_out_tok_s": same_batch.get("out_tok_s") if same_batch else None,
        "ratio_same_batch": _ratio(grpc, same_batch),
        "grpc": grpc,
        "offline": offline,
        "offline_same_batch": same_batch if same_batch is not offline else "offline",
    }


def main(argv: list[str] | None = None) -> int:
    args, config = parse_args(list(sys.argv[1:] if argv is None else argv))
    model_config = shapes.shape_config(config.shape)
    vocab_size = model_config["vocab_size"]
    shapes.write_model_dir(config.shape, config.model_dir)
    requests = workloads.build(config.workload, vocab_size)
    failed = False
    records: list[dict[str, Any]] = []
    for round_ in range(1, args.repeat + 1):
        if args.repeat > 1:
            print(f"[bench] round {round_} of {args.repeat}", file=sys.stderr, flush=True)
        failed |= run_round(args, config, requests, vocab_size, records)
    if args.repeat > 1:
        print(rounds_summary(records))
    return 1 if failed else 0


def rounds_summary(records: list[dict[str, Any]]) -> str:
    """The median of each ratio over the rounds, per engine core: single rounds spread widely."""
    lines = []
    for core in dict.fromkeys(r["engine_core"] for r in records):
        mine = [r for r in records if r["engine_core"] == core]
        cells = []
        for key, name in (("ratio", "vs offline"), ("ratio_same_batch", "vs offline at the streams' batch")):
            values = sorted(r[key] for r in mine if r.get(key) is not None)
            if values:
                cells.append(f"{name}: median {statistics.median(values):.3f} of {values}")
        lines.append(f"gRPC ({core}) over {len(mine)} rounds: " + "; ".join(cells or ["no ratio"]))
    return "\n".join(lines)


def run_round(
    args: argparse.Namespace,
    config: throughput.BenchConfig,
    requests,
    vocab_size: int,
    records: list[dict[str, Any]] | None = None,
) -> bool:
    """Every --engine-core through gRPC, then the offline run; one record per core (also appended to
    `records`). True if any failed."""
    results = {}
    for core in args.engine_core:
        print(
            f"[bench] gRPC, engine loop in a {core}: {len(requests)} prompts, {args.concurrency} streams",
            file=sys.stderr,
            flush=True,
        )
        try:
            results[core] = run_grpc(core, config, args, requests, vocab_size)
        except Exception as e:  # recorded: the other core and the offline figure still count
            results[core] = {"error": f"{type(e).__name__}: {e}", "engine_core": core}
    offline = same_batch = None
    if not args.no_offline:
        offline, same_batch = offline_references(config, args.concurrency, requests, vocab_size)
    failed = False
    for core, grpc_res in results.items():
        record = build_record(config, args, grpc_res, offline, same_batch)
        if records is not None:
            records.append(record)
        if config.results_dir:
            record_result(record, config.results_dir)
        if config.out_json:
            Path(config.out_json).with_suffix(f".{core}.json").write_text(json.dumps(record, indent=2) + "\n")
        failed |= (
            "error" in grpc_res or grpc_res.get("num_incomplete", 0) > 0 or grpc_res.get("num_errors", 0) > 0
        )
        print(
            f"\ngRPC ({core}): {grpc_res.get('out_tok_s', 'error')} out tok/s; offline: "
            f"{record['offline_out_tok_s']}; ratio {record['ratio']}; offline at {args.concurrency} "
            f"sequences: {record['offline_same_batch_out_tok_s']}; ratio {record['ratio_same_batch']}; "
            f"{grpc_res.get('tokens_per_message')} tok/msg; incomplete {grpc_res.get('num_incomplete')}; "
            f"errors {grpc_res.get('num_errors', grpc_res.get('error'))}"
        )
    return failed


def offline_references(
    config: throughput.BenchConfig, concurrency: int, requests, vocab_size: int
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The offline run as configured, and again at max_num_seqs = `concurrency` when the configured limit
    is higher (None otherwise: the first is that run too). The service never batches more than its
    streams, while the offline run queues every prompt at once."""
    offline = run_offline(config, requests, vocab_size)
    if config.max_num_seqs <= concurrency:
        return offline, None
    return offline, run_offline(replace(config, max_num_seqs=concurrency), requests, vocab_size)


def run_offline(config: throughput.BenchConfig, requests, vocab_size: int) -> dict[str, Any]:
    print(
        f"[bench] offline LLM.generate: {len(requests)} prompts, max_num_seqs {config.max_num_seqs}",
        file=sys.stderr,
        flush=True,
    )
    try:
        return throughput.run_pagoda(config, requests, vocab_size)
    except Exception as e:  # recorded: the gRPC figure still counts
        return {"error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
    sys.exit(main())
