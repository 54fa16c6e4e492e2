"""The full stack on one GPU: offline throughput workloads sent through `pagoda router` to `pagoda engine`.

    python -m benchmarks.router_full_stack --shape llama-1b --num-prompts 1000 [--concurrency 256]

Takes the flags of `pagoda bench grpc` (shape, workload, batch limits, --concurrency, --stream-interval,
--engine-core). Starts the engine service on random weights with the offline run's settings and a router
in front of it, streams the workload as concurrent /v1/completions requests with token-id prompts (so the
tokenizer service is not on this path; the model folder of a shape has no tokenizer, and the engine
streams token ids without text), then runs the offline `LLM.generate` on the same workload in this
process, as configured and again with max_num_seqs at --concurrency (the most the service can batch), one
row each. The figure of merit is the ratio of generated tokens per second, via router / offline (issue 5:
at least 0.9 for llama-1b). With --results-dir, one `router_full_stack` row per offline reference.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime

from pagoda.bench import engine_server, grpc_client, grpc_throughput, shapes, throughput, workloads
from pagoda.bench import serve as bench
from pagoda.bench.peers import subprocess_env
from pagoda.bench.results import record_result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def via_router(config, args, requests: list[workloads.Request], vocab_size: int) -> dict:
    """Engine + router up, warm-up, then the timed workload through the router; both stopped after."""
    engine = engine_server.EngineProcess(
        engine_server.server_command(config, args.engine_core[0], args.stream_interval)
    )
    router_port = free_port()
    router = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pagoda.cli",
            "router",
            "--host",
            "127.0.0.1",
            "--port",
            str(router_port),
            "--engine",
            f"127.0.0.1:{engine.port}",
            "--tokenizer",
            "127.0.0.1:1",
        ],
        env=subprocess_env(),
    )
    url = f"http://127.0.0.1:{router_port}"
    try:
        asyncio.run(grpc_client.wait_serving(f"127.0.0.1:{engine.port}", args.start_timeout))
        client = bench.BenchConfig(
            url=url,
            model=config.shape,
            max_concurrency=args.concurrency,
            temperature=config.temperature,
            ignore_eos=True,
            progress=False,
            processes=args.client_processes,
        )
        deadline = time.monotonic() + 60
        while asyncio.run(bench.run(client, [bench.Request([1, 2, 3], None, 2)]))["completed"] != 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the router did not serve within 60 s")
            time.sleep(0.5)
        spec = config.workload
        warm = [
            bench.Request(p, None, min(16, spec.output_len))
            for p in workloads.warmup_prompts(8, spec.input_len, vocab_size)
        ]
        asyncio.run(bench.run(client, warm))
        timed = [bench.Request(r.prompt_token_ids, None, r.max_tokens) for r in requests]
        with grpc_client.Occupancy(f"127.0.0.1:{engine.port}") as occupancy:
            report = asyncio.run(bench.run(client, timed))
        return {**report, "client_processes": args.client_processes, "occupancy": occupancy.summary()}
    finally:
        router.terminate()
        router.wait(30)
        engine.stop()


def main(argv: list[str] | None = None) -> int:
    args, config = grpc_throughput.parse_args(list(sys.argv[1:] if argv is None else argv))
    vocab_size = shapes.shape_config(config.shape)["vocab_size"]
    shapes.write_model_dir(config.shape, config.model_dir)
    requests = workloads.build(config.workload, vocab_size)
    print(f"[bench] through the router: {len(requests)} prompts, {args.concurrency} streams", file=sys.stderr)
    routed = via_router(config, args, requests, vocab_size)
    print(bench.format_report(routed))
    offline, same_batch = grpc_throughput.offline_references(config, args.concurrency, requests, vocab_size)
    card = throughput.card_name(config.device)
    ratios = {}
    for ref in [offline] + ([same_batch] if same_batch else []):
        ratio = round(routed["output_tok_s"] / ref["out_tok_s"], 4) if ref.get("out_tok_s") else None
        ratios[ref.get("max_num_seqs")] = ratio
        entry = {
            "kind": "router_full_stack",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "card": card,
            "commit": config.commit,
            "shape": config.shape,
            "workload": config.workload.to_dict(),
            "concurrency": args.concurrency,
            "stream_interval": args.stream_interval,
            "out_tok_s": routed["output_tok_s"],
            "offline_out_tok_s": ref.get("out_tok_s"),
            "offline_max_num_seqs": ref.get("max_num_seqs"),
            "ratio": ratio,
            "router": routed,
            "offline": ref,
        }
        if config.results_dir:
            record_result(entry, config.results_dir)
    print(
        f"via router {routed['output_tok_s']:,.0f} tok/s; ratios by offline batch limit {ratios}, "
        f"errors {routed['errors']}"
    )
    return 0 if routed["errors"] == 0 and all(r is not None for r in ratios.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
