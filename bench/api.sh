#!/usr/bin/env bash
# Load benchmark of the job API on loopback, with Debian's wrk (-t2 -c16):
# status reads/s on one job, and submits/s of invert.json (each with an Idempotency-Key).
# Reference (comfy-api-proxy 0.1.6 on this machine, same tool): 3,530 reads/s and
# 1,258 submits/s. Target: 10x that.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
PORT=${PORT:-18787}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q -p serverless-comfyui
data=$(mktemp -d ${BENCH_TMPDIR:+-p "$BENCH_TMPDIR"})
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
# A load test is not the tenant the default quota protects against (1,000 submits/s).
target/release/serverless-comfyui tenants set-quota --tenant default --data-dir "$data" \
  --submits-per-second 1000000 --max-active-jobs 4000000000 >/dev/null
RUST_LOG=warn target/release/serverless-comfyui dev --no-runner --listen 127.0.0.1:$PORT --data-dir "$data" 2>"$data/dev.log" &
pid=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/api/v2/health" >/dev/null && break; sleep 0.1; done
id=$(curl -sf -X POST "http://127.0.0.1:$PORT/api/v2/jobs" -H 'Content-Type: application/json' \
  -d "{\"workflow\": $(cat examples/workflows/invert.json)}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
echo "== status reads: GET /api/v2/jobs/$id"
wrk -t2 -c16 -d"$DURATION" --latency "http://127.0.0.1:$PORT/api/v2/jobs/$id"
echo "== submits: POST /api/v2/jobs (invert.json)"
WORKFLOW=examples/workflows/invert.json wrk -t2 -c16 -d"$DURATION" --latency -s bench/submit.lua "http://127.0.0.1:$PORT"
echo "== after the run"
curl -s "http://127.0.0.1:$PORT/api/v2/health"; echo
