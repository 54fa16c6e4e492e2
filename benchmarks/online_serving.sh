#!/bin/bash
# Online serving with the same clients against Pagoda and vLLM (issue 23); gpu_session.sh's stages `online`
# (Pagoda: tokenizer + engine + router) and `online-vllm` (`vllm serve`) call it, one server per call:
#
#     bash benchmarks/online_serving.sh pagoda|vllm
#
# Both servers load one folder of random bf16 weights with a tokenizer, written by the vLLM bundle's
# make_dummy_model.py (DUMMY_MODEL_SCRIPT) from ONLINE_CONFIG (default /tmp/vx/llama-1b.json; empty: the
# Llama-3.1-8B shape, e.g. ONLINE_CONFIG= ONLINE_MODEL=/tmp/s8b) into ONLINE_MODEL (/tmp/s1b). At each
# concurrency of ONLINE_CONCURRENCY ("256 16") three clients run in turn, each with a seed of its own (so no run
# hits the prefix cache of another), random ONLINE_INPUT_LEN (512) in / ONLINE_OUTPUT_LEN (256) out, EOS ignored,
# ONLINE_PROMPTS (1000) prompts:
#   vllm-1p    `vllm bench serve`, one asyncio process (vLLM's folder on its PYTHONPATH only)
#   pagoda-1p  `pagoda bench serve` (the same measures, vLLM's definitions), one process
#   pagoda-Np  `pagoda bench serve --processes ONLINE_CLIENTS` (4): the load split over N client processes
# One client process can be the limit at ~10k events/s: where pagoda-1p and pagoda-Np differ, the server was
# not; where they agree (within 10 %), the clients were not. Pagoda runs once per ENGINE_STREAMS
# ("multiplex generate": the router's --engine-stream, i.e. with and without Multiplex).
# While each client runs, the server's own generated-token counter is sampled every 0.5 s; the row
# `server_tok_s` is its best 5-s rate within the run, beside what the client counted.
# Out: $OUT/online/<server>-<label>-c<concurrency>.json for every client and $OUT/online/summary.jsonl; the
# pagoda-* runs are also rows (kind serve) in $RES/results.jsonl when RES is set (gpu_session.sh sets it).
# ENGINE_ARGS / VLLM_ARGS add flags to the servers; ONLINE_DEVICE_ARGS (default: none) lets the Pagoda half
# run on a CPU with a tiny config for a dry run ("--device cpu --dtype float32").
set -uo pipefail
SERVER=${1:?usage: online_serving.sh pagoda|vllm}
OUT=${OUT:-/tmp/out}
DIR=$OUT/online
mkdir -p "$DIR"
MODEL=${ONLINE_MODEL:-/tmp/s1b}
NAME=$(basename "$MODEL")
VLLM_SITE=${VLLM_SITE:-/tmp/site}
PROMPTS=${ONLINE_PROMPTS:-1000}
IN=${ONLINE_INPUT_LEN:-512}
OUT_LEN=${ONLINE_OUTPUT_LEN:-256}
CLIENTS=${ONLINE_CLIENTS:-4}
COMMIT=${COMMIT:-unknown}
CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
VLLM_ENV=(PYTHONPATH="$VLLM_SITE" VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TVM_FFI_DISABLE_TORCH_C_DLPACK=1 VLLM_CACHE_ROOT=/tmp/vllm_cache)
PIDS=()
trap 'for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null; done; wait 2>/dev/null' EXIT

say() { echo "[$(date -u +%H:%M:%S)] online: $*"; }

http_get() {  # http_get URL: the body, or a non-zero status (python, not curl: the GPU machine may lack it)
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1" 2>/dev/null
}

wait_http() {  # wait_http URL SECONDS
  local deadline=$((SECONDS + $2))
  until http_get "$1" > /dev/null; do
    [ $SECONDS -lt $deadline ] || { say "no answer from $1 in $2 s"; return 1; }
    sleep 1
  done
}

sample_counter() {  # sample_counter METRICS_URL METRIC FILE: "time value" every 0.5 s until killed
  while true; do
    echo "$(date +%s.%N) $(http_get "$1" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 { s += $2 } END { print s }')" >> "$3"
    sleep 0.5
  done
}

server_rate() {  # server_rate FILE START END: the best generated tok/s over 5 s within [START, END]
  python3 - "$@" <<'EOF'
import sys
path, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = []
for line in open(path):
    fields = line.split()  # "time value"; the value is missing while the server did not answer
    if len(fields) == 2 and start <= float(fields[0]) <= end:
        rows.append((float(fields[0]), float(fields[1])))
best = 0.0
for i, (t0, v0) in enumerate(rows):
    for t1, v1 in rows[i + 1 :]:
        if t1 - t0 >= 5.0:
            best = max(best, (v1 - v0) / (t1 - t0))
            break
print(round(best, 1))
EOF
}

clients() {  # clients SERVER_LABEL BASE_URL METRICS_URL METRIC: every client at every concurrency
  local label=$1 url=$2 metrics=$3 metric=$4 seed=100 c run start end rate file
  for c in ${ONLINE_CONCURRENCY:-256 16}; do
    for run in vllm-1p pagoda-1p "pagoda-${CLIENTS}p"; do
      seed=$((seed + 1))
      file=$DIR/$label-$run-c$c.json
      : > "$DIR/counter.tsv"
      sample_counter "$metrics" "$metric" "$DIR/counter.tsv" & local sampler=$!
      start=$(date +%s.%N)
      case $run in
        vllm-1p)
          [ -d "$VLLM_SITE/vllm" ] || { say "no vLLM in $VLLM_SITE: skipping the vLLM client"; kill $sampler; continue; }
          env "${VLLM_ENV[@]}" python3 -m vllm.entrypoints.cli.main bench serve --backend openai --base-url "$url" \
            --endpoint /v1/completions --model "$MODEL" --served-model-name "$NAME" --tokenizer "$MODEL" \
            --dataset-name random --random-input-len "$IN" --random-output-len "$OUT_LEN" --num-prompts "$PROMPTS" \
            --max-concurrency "$c" --ignore-eos --temperature 0 --seed "$seed" \
            --percentile-metrics ttft,tpot,itl,e2el --metric-percentiles 50,90,99 \
            --save-result --result-dir "$DIR" --result-filename "$(basename "$file")" ;;
        pagoda-*)
          local procs=${run#pagoda-}; procs=${procs%p} rec=()
          [ -z "${RES:-}" ] || rec=(--results-dir "$RES" --commit "$COMMIT" --card "${CARD:-unknown}" --note "$label")
          python3 -m pagoda.cli bench serve --url "$url" --model "$NAME" --num-prompts "$PROMPTS" \
            --input-len "$IN" --output-len "$OUT_LEN" --max-concurrency "$c" --temperature 0 --seed "$seed" \
            --processes "$procs" --no-progress --json "$file" ${rec[@]+"${rec[@]}"} ;;
      esac
      end=$(date +%s.%N)
      kill $sampler; wait $sampler 2>/dev/null
      rate=$(server_rate "$DIR/counter.tsv" "$start" "$end")
      python3 - "$file" "$label" "$run" "$c" "$rate" >> "$DIR/summary.jsonl" <<'EOF'
import json, sys
path, label, run, c, rate = sys.argv[1:]
try:
    r = json.load(open(path))
except OSError:
    r = {}
gap = r.get("stream_p99_gap_ms") or {}
print(json.dumps({
    "server": label, "client": run, "concurrency": int(c), "server_tok_s": float(rate),
    "client_tok_s": r.get("output_throughput", r.get("output_tok_s")),
    "itl_p99_ms": r.get("p99_itl_ms", (r.get("itl_ms") or {}).get("p99")),
    "tpot_p50_ms": r.get("median_tpot_ms", (r.get("tpot_ms") or {}).get("p50")),
    "tokens_per_event": r.get("tokens_per_event"), "stream_p99_gap_p99_ms": gap.get("p99"),
}))
EOF
      say "$(tail -1 "$DIR/summary.jsonl")"
    done
  done
}

python3 - <<EOF || exit 1
import os, subprocess, sys
config = "${ONLINE_CONFIG-/tmp/vx/llama-1b.json}"  # empty: make_dummy_model.py's own, the Llama-3.1-8B shape
if not os.path.exists("$MODEL/tokenizer.json"):
    subprocess.run([sys.executable, "${DUMMY_MODEL_SCRIPT:-/tmp/vx/make_dummy_model.py}", "$MODEL"]
                   + (["--config", config] if config else []), check=True)
EOF

case $SERVER in
  pagoda)
    python3 -m pagoda.cli tokenizer --model "$MODEL" --host 127.0.0.1 --port 50052 --metrics-port 0 \
      > "$DIR/tokenizer.log" 2>&1 & PIDS+=($!)
    python3 -m pagoda.cli engine --model "$MODEL" --load-format dummy --served-model-name "$NAME" \
      --host 127.0.0.1 --port 50051 --metrics-port 9101 ${ONLINE_DEVICE_ARGS:-} ${ENGINE_ARGS:-} \
      > "$DIR/engine.log" 2>&1 & PIDS+=($!)
    wait_http http://127.0.0.1:9101/metrics 600 || exit 1
    for mode in ${ENGINE_STREAMS:-multiplex generate}; do
      python3 -m pagoda.cli router --host 127.0.0.1 --port 8000 --engine 127.0.0.1:50051 \
        --tokenizer 127.0.0.1:50052 --engine-stream "$mode" > "$DIR/router-$mode.log" 2>&1 & local_router=$!
      PIDS+=($local_router)
      wait_http http://127.0.0.1:8000/health 600 || exit 1
      clients "pagoda-$mode" http://127.0.0.1:8000 http://127.0.0.1:9101/metrics pagoda:generation_tokens_total
      kill $local_router; wait $local_router 2>/dev/null
    done ;;
  vllm)
    env "${VLLM_ENV[@]}" python3 -m vllm.entrypoints.cli.main serve "$MODEL" --served-model-name "$NAME" \
      --load-format dummy --port 8001 ${VLLM_ARGS:-} > "$DIR/vllm-serve.log" 2>&1 & PIDS+=($!)
    wait_http http://127.0.0.1:8001/health 600 || exit 1
    clients vllm http://127.0.0.1:8001 http://127.0.0.1:8001/metrics vllm:generation_tokens_total ;;
  *) echo "usage: online_serving.sh pagoda|vllm"; exit 2 ;;
esac
