#!/bin/bash
# One device call's work on the GPU machine, run from the repository root:
#
#     COMMIT=<sha> PEERS=vllm bash benchmarks/gpu_session.sh STAGE [STAGE...]
#
# Stages, run in the order given (a failing stage is logged and the next one still runs):
#   stash      copy the carried .vllm_xfer/* into /tmp/vx (the vLLM bundle comes in 4 parts over 4 calls;
#              /tmp/vx survives while the machine stays warm)
#   assemble   check the 4 parts and unpack vLLM into /tmp/site (../shared/tools/vllm-peer/device_assemble.sh)
#   tests      the GPU tests (pytest -m gpu), stopped after TEST_TIMEOUT seconds
#   quick      llama-1b, fixed, QUICK_PROMPTS prompts, Pagoda alone: does it run, and roughly how fast
#   1b         llama-1b, fixed 1000 x 512 / 256                          (+ PEERS)
#   1b-prefix  llama-1b, shared prefix of 1024 + 512 / 256, prefix caching on, then off   (+ PEERS)
#   1b-random  llama-1b, random lengths 256-768 / 128-384                (+ PEERS)
#   qwen       qwen-0.5b, fixed 1000 x 512 / 256                         (+ PEERS)
#   8b         llama-8b, fixed 1000 x 512 / 256                          (+ PEERS)
#   hf         llama-1b, fixed, with the transformers peers (static generate + continuous batching) on
#              HF_PROMPTS prompts
#   grpc       llama-1b, fixed, through the engine gRPC service at 256 streams, then offline (batch limit 512,
#              and 256), GRPC_REPEAT rounds (issue 4's ratios; run `extras` first for grpc_health)
#   fullstack  llama-1b, fixed, through router + engine at 256 streams, then offline (issue 5's ratio)
#   grpc-profile  py-spy (carried in .devcarry; run `extras` first) over one gRPC run and one offline run
#              at 256 sequences, llama-1b: raw profiles and their summaries in $OUT (not results rows)
#   host-step  benchmarks/host_step.py on this machine's CPU: the engine loop's host work per step
#   tp-tests   the tensor-parallel GPU tests (tests/parallel -m gpu; two GPUs)
#   allreduce  benchmarks/all_reduce.py: NCCL vs the one-shot all-reduce, decode-sized tensors (two GPUs)
#   tp8b       llama-8b, fixed, TP_PROMPTS prompts: TP=1, TP=2 with NCCL only, TP=2 with the custom all-reduce; batch-1 step (two GPUs)
#   gemv       benchmarks/gemv.py: the Triton decode GEMV against cuBLAS at the llama shapes, M = 1..8
#   timeline   benchmarks/decode_timeline.py: llama-8b batch-1 decode steps on the device timeline (busy, idle
#              waiting on the host, idle otherwise) at TP=1 and TP=2 (two GPUs); the traces gzipped to $OUT
#   timeline-no-pdl  the same with --no-pdl (the kernels in plain stream order)
#
# Environment: COMMIT (recorded in results; the device copy has no .git), PEERS ("vllm", "vllm hf" or ""
# for Pagoda alone; default vllm), NUM_PROMPTS (1000), QUICK_PROMPTS (200), HF_PROMPTS (256),
# TEST_TIMEOUT (300), TIMELINE_NOTE (recorded in the timeline rows), PEER_TIMEOUT (420), GRPC_CLIENTS (client processes of the grpc and fullstack
# stages, 1), BENCH_ARGS (flags appended to every bench run: they win).
#
# Results accumulate in /tmp/pagoda-results, seeded from benchmarks/ on the machine's first call and kept
# while it stays warm, and are copied to $OUT after every stage: each call's $OUT/results.jsonl and
# $OUT/RESULTS.md are the repo's files plus every row this machine produced, so copying the last call's two
# files over benchmarks/ is the whole merge. $OUT also gets session.log (all output) and tests.log.
# Pagoda runs on the machine's own packages; vLLM's folder /tmp/site goes on PYTHONPATH only inside the
# vLLM peer's subprocess (pagoda/bench/throughput.py sets it).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# EXTRA_PYTHONPATH: packages unpacked on the machine for this session (e.g. grpcio-health-checking 1.84).
export PYTHONPATH=$PWD${EXTRA_PYTHONPATH:+:$EXTRA_PYTHONPATH} PYTHONUNBUFFERED=1
COMMIT=${COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
PEERS=${PEERS-vllm}
NUM_PROMPTS=${NUM_PROMPTS:-1000}
LOG=$OUT/session.log
RES=/tmp/pagoda-results
[ -f "$RES/results.jsonl" ] || { mkdir -p "$RES" && cp benchmarks/results.jsonl benchmarks/RESULTS.md "$RES/"; }

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

bench() {  # bench ARGS...: one configuration, every engine, one results row
  local peers=()
  for p in $PEERS; do peers+=(--peer "$p"); done
  python3 -m pagoda.cli bench throughput --results-dir "$RES" --commit "$COMMIT" \
    --peer-timeout "${PEER_TIMEOUT:-420}" ${peers[@]+"${peers[@]}"} "$@" ${BENCH_ARGS:-}
}

stage() {
  case "$1" in
    stash) mkdir -p /tmp/vx && cp .vllm_xfer/* /tmp/vx/ && ls -la /tmp/vx ;;
    extras)  # carried wheels (.devcarry) unpacked into /tmp/extra; pass EXTRA_PYTHONPATH=/tmp/extra
      python3 -m pip install -q --no-deps --target /tmp/extra .devcarry/*.whl .devcarry/obs-wheels/*.whl ;;
    assemble) bash /tmp/vx/device_assemble.sh ;;
    tests)
      nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.sm,clocks.max.sm --format=csv
      timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu -p no:cacheprovider --continue-on-collection-errors tests \
        2>&1 | tee "$OUT/tests.log" ;;
    quick) PEERS="" bench --shape llama-1b --num-prompts "${QUICK_PROMPTS:-200}" ;;
    1b) bench --shape llama-1b --num-prompts "$NUM_PROMPTS" ;;
    1b-prefix)
      bench --shape llama-1b --workload shared-prefix --num-prompts "$NUM_PROMPTS"; local rc=$?
      bench --shape llama-1b --workload shared-prefix --num-prompts "$NUM_PROMPTS" --no-prefix-caching \
        && return $rc ;;
    1b-random) bench --shape llama-1b --workload random --num-prompts "$NUM_PROMPTS" ;;
    qwen) bench --shape qwen-0.5b --num-prompts "$NUM_PROMPTS" ;;
    8b) bench --shape llama-8b --num-prompts "$NUM_PROMPTS" ;;
    hf) PEERS=hf bench --shape llama-1b --num-prompts "$NUM_PROMPTS" --hf-num-prompts "${HF_PROMPTS:-256}" ;;
    grpc)
      python3 -m pagoda.cli bench grpc --shape llama-1b --num-prompts "$NUM_PROMPTS" --concurrency 256 \
        --repeat "${GRPC_REPEAT:-2}" --client-processes "${GRPC_CLIENTS:-1}" --results-dir "$RES" \
        --commit "$COMMIT" ${BENCH_ARGS:-} ;;  # each round: offline as configured and at 256 sequences
    fullstack)
      python3 benchmarks/router_full_stack.py --shape llama-1b --num-prompts "$NUM_PROMPTS" --concurrency 256 \
        --client-processes "${GRPC_CLIENTS:-1}" --results-dir "$RES" --commit "$COMMIT" ${BENCH_ARGS:-} ;;
    grpc-profile)
      local spy=(/tmp/extra/bin/py-spy record --subprocesses --nonblocking --rate 250 --format raw)
      "${spy[@]}" -o "$OUT/pyspy-grpc.txt" -- python3 -m pagoda.cli bench grpc --shape llama-1b \
        --num-prompts "$NUM_PROMPTS" --concurrency 256 --no-offline --client-processes "${GRPC_CLIENTS:-1}" \
        --results-dir /tmp/profiled --commit "$COMMIT"; local rc=$?
      "${spy[@]}" -o "$OUT/pyspy-offline.txt" -- python3 -m pagoda.cli bench throughput --shape llama-1b \
        --num-prompts "$NUM_PROMPTS" --max-num-seqs 256 --decode-batch-sizes= --results-dir /tmp/profiled \
        --commit "$COMMIT" || rc=$?
      for f in grpc offline; do
        python3 benchmarks/pyspy_summary.py "$OUT/pyspy-$f.txt" --top 60 > "$OUT/pyspy-$f-summary.txt"
        gzip -f "$OUT/pyspy-$f.txt"
      done
      return $rc ;;
    host-step) python3 benchmarks/host_step.py --results-dir "$RES" --commit "$COMMIT" ;;
    tp-tests)
      timeout "${TEST_TIMEOUT:-300}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/parallel \
        2>&1 | tee "$OUT/tp-tests.log" ;;
    allreduce) python3 benchmarks/all_reduce.py --results-dir "$RES" ;;
    gemv) python3 benchmarks/gemv.py --out "$RES/results.jsonl" --append --commit "$COMMIT" ;;
    timeline|timeline-no-pdl)
      local tl=(python3 benchmarks/decode_timeline.py --shape llama-8b --results-dir "$RES" --commit "$COMMIT") rc=0
      local tag=${1#timeline}
      [ -z "$tag" ] || tl+=(--no-pdl)
      [ -z "${TIMELINE_NOTE:-}" ] || tl+=(--note "$TIMELINE_NOTE")
      "${tl[@]}" --trace-dir "/tmp/trace$tag-tp1" || rc=$?
      "${tl[@]}" --trace-dir "/tmp/trace$tag-tp2" --tensor-parallel-size 2 || rc=$?
      gzip -c "/tmp/trace$tag-tp1/rank0.json" > "$OUT/trace$tag-tp1-rank0.json.gz"
      for r in 0 1; do gzip -c "/tmp/trace$tag-tp2/rank$r.json" > "$OUT/trace$tag-tp2-rank$r.json.gz"; done
      return $rc ;;
    tp8b)
      local tp=(--shape llama-8b --num-prompts "${TP_PROMPTS:-500}" --decode-batch-sizes 1)
      PEERS="" bench "${tp[@]}"; local rc=$?
      PEERS="" bench "${tp[@]}" --tensor-parallel-size 2 --no-custom-all-reduce || rc=$?
      PEERS="" bench "${tp[@]}" --tensor-parallel-size 2 --custom-all-reduce || rc=$?
      return $rc ;;
    *) echo "unknown stage $1 (see the top of $0)"; return 2 ;;
  esac
}

[ $# -gt 0 ] || { sed -n '2,30p' "$0"; exit 2; }
status=0
for s in "$@"; do
  say "stage $s: start"
  start=$SECONDS
  stage "$s" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  cp "$RES/results.jsonl" "$RES/RESULTS.md" "$OUT/"
  say "stage $s: rc=$rc in $((SECONDS - start)) s"
  [ "$rc" = 0 ] || status=1
done
say "rows this machine added to RESULTS.md:"
tail -n +"$(($(wc -l < benchmarks/RESULTS.md) + 1))" "$RES/RESULTS.md" | tee -a "$LOG"
exit $status
