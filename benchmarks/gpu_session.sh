#!/bin/bash
# The GPU machine's work, in stages, run from the repository root:
#
#     COMMIT=<sha> bash benchmarks/gpu_session.sh STAGE [STAGE...]
#
# Setup stages (the vLLM peer comes as a bundle of 4 parts, one a call: a call carries 64 MiB at most):
#   stash      copy the carried parts ($VLLM_PARTS/*, default .vllm_xfer) into /tmp/vx; once per part
#   assemble   check the 4 parts and unpack vLLM into $VLLM_SITE (default /tmp/site), in the 4th call
#   extras     unpack carried wheels (.devcarry/*.whl) into /tmp/extra; pass EXTRA_PYTHONPATH=/tmp/extra
# Measuring stages, each recording rows in results.jsonl through pagoda.bench.results.record_result:
#   offline    llama-1b and llama-8b, fixed 1000 x 512 / 256, beside $PEERS      rows: throughput
#   prefix     llama-1b, 1024 shared + 512 / 256, prefix caching on, then off (+ PEERS)   throughput
#   random     llama-1b, input 256-768, output 128-384 (+ PEERS)                           throughput
#   qwen       qwen-0.5b, fixed (+ PEERS)                                                  throughput
#   hf         llama-1b, fixed, beside transformers (static generate, continuous batching) throughput
#   moe        qwen3-30b-a3b (128 experts, top-8; 61 GB in bf16), fixed (+ PEERS)                  throughput
#   gemma      gemma-2-9b, then gemma-3-1b, fixed (+ PEERS)                                       throughput
#   phi        phi-4-mini, fixed (+ PEERS)                                                        throughput
#   fp8        llama-8b with FP8 weights: per-tensor, then 128x128 blocks (+ PEERS; the bf16 row is
#              offline's)                                                                         throughput
#   fp8-more   llama-8b quantized on load (--quantization fp8), then bf16 weights with an FP8 KV cache
#              (--kv-cache-dtype fp8) (+ PEERS, with the same settings)                           throughput
#   quick      llama-1b, fixed, QUICK_PROMPTS prompts, Pagoda alone                        throughput
#   grpc       llama-1b through the engine gRPC service at 256 streams, then offline      grpc
#              (GRPC_REPEAT rounds; the engine needs grpcio-health-checking: `extras` first)
#   fullstack  llama-1b through router + engine at 256 streams, then offline             router_full_stack
#   online     llama-1b served by Pagoda (tokenizer + engine + router, with and without Multiplex), driven
#              by `vllm bench serve` and `pagoda bench serve` (1 and 4 processes) at 256 and 16 streams
#              (benchmarks/online_serving.sh; needs the vLLM bundle for its client and the model folder)  serve
#   online-vllm  the same clients against `vllm serve` on the same folder (a call of its own)
#   kernels    decode attention and sampling (beside torch), the batch-1 KV split sweep, the decode GEMV
#              (beside cuBLAS)                                          rows: kernels, attention_splits, gemv
#   timeline   llama-8b batch-1 decode steps on the device timeline (TP=1; TP=2 too on two GPUs), llama-1b
#              at batch 256; the traces go to $OUT/traces.tar.gz                          decode_timeline
#   timeline-no-pdl  the same with the Triton kernels in plain stream order               decode_timeline
#   host-step  the engine loop's host work per step, on this machine's CPU                host_step
#   moe-tune   the fused MoE kernel's launch shapes per token count, for each of $MOE_TUNE_SHAPES
#              (default qwen3-30b-a3b; one shape a call): prints the ops/triton_moe.py table   moe_tune
#   tp         two GPUs: llama-8b, TP_PROMPTS prompts at TP=1, TP=2 NCCL only, TP=2 custom all-reduce;
#              then the all-reduces alone                                  rows: throughput, all_reduce
# Test stages (logs to $OUT):
#   tests      the GPU tests, pytest -m gpu (TEST_TIMEOUT seconds at most)                tests.log
#   tp-tests   the tensor-parallel GPU tests, tests/parallel -m gpu (two GPUs)            tp-tests.log
#
# A call runs 10 minutes at most: offline with vLLM takes about 6 (vLLM starts in 50-70 s per model);
# grpc ~3, kernels ~3, timeline ~2, host-step ~1, tests ~5. On one GPU, in calls on one warm machine:
#   1-3: stash (carry .vllm_xfer/part.00 + MANIFEST.sha256 + device_assemble.sh, then part.01, part.02)
#   4:   stash assemble offline                                  (carry part.03)
#   5:   extras grpc kernels timeline host-step  (EXTRA_PYTHONPATH=/tmp/extra; carry .devcarry)
#   6:   tests
#
# Environment: COMMIT (recorded in every row: the device's copy has no .git), PEERS ("vllm", "vllm hf"
# or "" for Pagoda alone; default vllm), VLLM_SITE (/tmp/site), VLLM_PARTS (.vllm_xfer), NUM_PROMPTS
# (1000), QUICK_PROMPTS (200), HF_PROMPTS (256), TP_PROMPTS (500), GRPC_REPEAT (2), GRPC_CLIENTS (client
# processes of grpc and fullstack, 1), TEST_TIMEOUT (300), PEER_TIMEOUT (420), TIMELINE_NOTE (recorded in
# the timeline rows), BENCH_ARGS (flags appended to every `pagoda bench` run: they win).
#
# Rows accumulate in /tmp/pagoda-results/results.jsonl, seeded from benchmarks/results.jsonl on the
# machine's first call and kept while it stays warm; after every stage it is copied to $OUT. So each
# call's $OUT/results.jsonl is the repository's rows plus every row this machine added: copy the last one
# over benchmarks/results.jsonl and run `python -m benchmarks.results` (RESULTS.md, docs/PERFORMANCE.md).
# $OUT also gets session.log (all output, ending with the tables of the new rows).
# Pagoda runs on the machine's own packages; vLLM's folder goes on the path of the vLLM peer's process only.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH} PYTHONUNBUFFERED=1
COMMIT=${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
PEERS=${PEERS-vllm}
VLLM_SITE=${VLLM_SITE:-/tmp/site}
NUM_PROMPTS=${NUM_PROMPTS:-1000}
LOG=$OUT/session.log
RES=/tmp/pagoda-results
TRACES=/tmp/pagoda-traces
[ -f "$RES/results.jsonl" ] || { mkdir -p "$RES" && cp benchmarks/results.jsonl "$RES/"; }
SEEDED=$(wc -l < benchmarks/results.jsonl)
REC=(--results-dir "$RES" --commit "$COMMIT")

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
num_gpus() { python3 -c 'import torch; print(torch.cuda.device_count())'; }

bench() {  # bench ARGS...: one configuration, Pagoda and every peer in $PEERS, one row
  local peers=()
  for p in $PEERS; do peers+=(--peer "$p"); done
  [[ " $PEERS " != *" vllm "* ]] || peers+=(--vllm-site "$VLLM_SITE")
  python3 -m pagoda.cli bench throughput "${REC[@]}" --peer-timeout "${PEER_TIMEOUT:-420}" \
    ${peers[@]+"${peers[@]}"} "$@" ${BENCH_ARGS:-}
}

timeline() {  # timeline NAME ARGS...: one decode timeline, its rank traces kept under $TRACES/NAME
  local tl=(python3 -m benchmarks.decode_timeline "${REC[@]}" --trace-dir "$TRACES/$1")
  [ -z "${TIMELINE_NOTE:-}" ] || tl+=(--note "$TIMELINE_NOTE")
  "${tl[@]}" "${@:2}"
}

stage() {
  local rc=0
  case "$1" in
    stash) mkdir -p /tmp/vx && cp "${VLLM_PARTS:-.vllm_xfer}"/* /tmp/vx/ && ls -la /tmp/vx ;;
    assemble) SITE=$VLLM_SITE bash /tmp/vx/device_assemble.sh ;;
    extras) python3 -m pip install -q --no-deps --target /tmp/extra .devcarry/*.whl .devcarry/obs-wheels/*.whl ;;
    offline)
      bench --shape llama-1b --num-prompts "$NUM_PROMPTS" || rc=$?
      bench --shape llama-8b --num-prompts "$NUM_PROMPTS" || rc=$?
      return $rc ;;
    prefix)
      bench --shape llama-1b --workload shared-prefix --num-prompts "$NUM_PROMPTS" || rc=$?
      bench --shape llama-1b --workload shared-prefix --num-prompts "$NUM_PROMPTS" --no-prefix-caching || rc=$?
      return $rc ;;
    random) bench --shape llama-1b --workload random --num-prompts "$NUM_PROMPTS" ;;
    qwen) bench --shape qwen-0.5b --num-prompts "$NUM_PROMPTS" ;;
    moe) bench --shape qwen3-30b-a3b --num-prompts "$NUM_PROMPTS" ;;
    gemma)
      bench --shape gemma-2-9b --num-prompts "$NUM_PROMPTS" || rc=$?
      bench --shape gemma-3-1b --num-prompts "$NUM_PROMPTS" || rc=$?
      return $rc ;;
    phi) bench --shape phi-4-mini --num-prompts "$NUM_PROMPTS" ;;
    fp8)
      bench --shape llama-8b-fp8 --num-prompts "$NUM_PROMPTS" || rc=$?
      bench --shape llama-8b-fp8-block --num-prompts "$NUM_PROMPTS" || rc=$?
      return $rc ;;
    fp8-more)
      bench --shape llama-8b --num-prompts "$NUM_PROMPTS" --quantization fp8 || rc=$?
      bench --shape llama-8b --num-prompts "$NUM_PROMPTS" --kv-cache-dtype fp8 || rc=$?
      return $rc ;;
    hf) PEERS=hf bench --shape llama-1b --num-prompts "$NUM_PROMPTS" --hf-num-prompts "${HF_PROMPTS:-256}" ;;
    quick) PEERS="" bench --shape llama-1b --num-prompts "${QUICK_PROMPTS:-200}" ;;
    grpc)  # each round: gRPC, then offline as configured and at the streams' batch limit
      python3 -m pagoda.cli bench grpc "${REC[@]}" --shape llama-1b --num-prompts "$NUM_PROMPTS" \
        --concurrency 256 --repeat "${GRPC_REPEAT:-2}" --client-processes "${GRPC_CLIENTS:-1}" ${BENCH_ARGS:-} ;;
    fullstack)
      python3 -m benchmarks.router_full_stack "${REC[@]}" --shape llama-1b --num-prompts "$NUM_PROMPTS" \
        --concurrency 256 --client-processes "${GRPC_CLIENTS:-1}" ${BENCH_ARGS:-} ;;
    online) RES=$RES COMMIT=$COMMIT OUT=$OUT VLLM_SITE=$VLLM_SITE bash benchmarks/online_serving.sh pagoda ;;
    online-vllm) OUT=$OUT VLLM_SITE=$VLLM_SITE bash benchmarks/online_serving.sh vllm ;;
    kernels)
      python3 -m benchmarks.kernels "${REC[@]}" || rc=$?
      python3 -m benchmarks.kernels "${REC[@]}" --splits-only || rc=$?
      python3 -m benchmarks.gemv "${REC[@]}" || rc=$?
      return $rc ;;
    timeline|timeline-no-pdl)
      local tag=${1#timeline} pdl=()
      [ -z "$tag" ] || pdl=(--no-pdl)
      timeline "8b-tp1$tag" --shape llama-8b ${pdl[@]+"${pdl[@]}"} || rc=$?
      if [ "$(num_gpus)" -ge 2 ]; then
        timeline "8b-tp2$tag" --shape llama-8b --tensor-parallel-size 2 ${pdl[@]+"${pdl[@]}"} || rc=$?
      fi
      timeline "1b-b256$tag" --shape llama-1b --batch 256 --tokens 32 ${pdl[@]+"${pdl[@]}"} || rc=$?
      tar -czf "$OUT/traces.tar.gz" -C "$TRACES" . || rc=$?
      return $rc ;;
    host-step) python3 -m benchmarks.host_step "${REC[@]}" ;;
    moe-tune) python3 -m benchmarks.tune_moe "${REC[@]}" --shapes ${MOE_TUNE_SHAPES:-qwen3-30b-a3b} ;;
    tp)
      [ "$(num_gpus)" -ge 2 ] || { echo "tp needs two GPUs"; return 2; }
      local tp=(--shape llama-8b --num-prompts "${TP_PROMPTS:-500}" --decode-batch-sizes 1)
      PEERS="" bench "${tp[@]}" || rc=$?
      PEERS="" bench "${tp[@]}" --tensor-parallel-size 2 --no-custom-all-reduce || rc=$?
      PEERS="" bench "${tp[@]}" --tensor-parallel-size 2 --custom-all-reduce || rc=$?
      python3 -m benchmarks.all_reduce "${REC[@]}" || rc=$?
      return $rc ;;
    tests)
      nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv
      timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors \
        tests 2>&1 | tee "$OUT/tests.log" ;;
    tp-tests)
      timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/parallel \
        2>&1 | tee "$OUT/tp-tests.log" ;;
    *) echo "unknown stage $1 (see the top of $0)"; return 2 ;;
  esac
}

[ $# -gt 0 ] || { awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 2; }
status=0
for s in "$@"; do
  say "stage $s: start"
  start=$SECONDS
  stage "$s" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  cp "$RES/results.jsonl" "$OUT/"
  say "stage $s: rc=$rc in $((SECONDS - start)) s"
  [ "$rc" = 0 ] || status=1
done
say "rows this machine added:"
python3 -m benchmarks.results --results "$RES/results.jsonl" --since "$SEEDED" 2>&1 | tee -a "$LOG"
exit $status
