"""Development benchmarks and experiments, not installed with Pagoda: run them from a checkout's root as
`python -m benchmarks.NAME --help`. What users run is `pagoda bench throughput | grpc | serve`.

Every figure is recorded by `pagoda.bench.results.record_result` (one row to benchmarks/results.jsonl);
`python -m benchmarks.results` builds benchmarks/RESULTS.md and docs/PERFORMANCE.md from the rows, and
`benchmarks/gpu_session.sh` runs the GPU stages on a GPU machine.

    host_step               the engine loop's host work per step, the model taken out (CPU)
    decode_timeline         decode steps on the device timeline, from the engine's own profile (GPU)
    timeline                reading those traces: steps, idle gaps, critical path, time per op
    kernels                 Triton decode attention and sampling beside their floors and torch (GPU)
    gemv                    the decode GEMV beside cuBLAS at the llama shapes (GPU)
    graph_timing            per-call time of a kernel captured in a CUDA graph (kernels, gemv)
    all_reduce              the one-shot and fused all-reduces beside NCCL (two GPUs or more)
    router_overhead         what one router process adds between a client and an engine (CPU)
    router_full_stack       router + engine beside the offline run (GPU)
    kv_routing              kv_aware vs prefix_affinity vs least_requests on multi-turn chats, two engines
    observability_overhead  metrics and tracing on, against off
    results                 RESULTS.md and docs/PERFORMANCE.md from results.jsonl
"""
