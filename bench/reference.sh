#!/usr/bin/env bash
# The reference side by side: the same wrk load (-t2 -c16) against comfy-api-proxy
# 0.1.6 (Comfy API v2 in front of a ComfyUI; here our simulator stands in for ComfyUI)
# and against a release `dev`, in one sitting, so that the ratio does not depend on how
# fast this machine happens to be today. Submits carry no label here: the proxy takes
# `metadata` only as a string. Not part of the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release -q -p serverless-comfyui -p comfyui-sim
venv=target/bench-reference-venv
# Pinned, with its dependencies, in bench/reference-requirements.txt.
[ -x "$venv/bin/comfy-api-proxy" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q -r bench/reference-requirements.txt; }
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
wait_for() { for _ in $(seq 150); do curl -s -o /dev/null "$1" && return; sleep 0.1; done; echo "no answer from $1" >&2; exit 1; }
create() { curl -sf -X POST "$1/api/v2/jobs" -H 'Content-Type: application/json' \
  -d "{\"workflow\": $(cat examples/workflows/invert.json)}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
load() {
  local base=$1 id; id=$(create "$base")
  printf '  reads   '; wrk -t2 -c16 -d"$DURATION" --latency "$base/api/v2/jobs/$id" | awk '/Requests\/sec/{r=$2} $1=="50%"{p50=$2} $1=="99%"{p99=$2} /Non-2xx/{e=$NF} END{printf "%10.0f/s  p50 %s  p99 %s%s\n", r, p50, p99, e ? "  NON-2XX: " e : ""}'
  printf '  submits '; NO_METADATA=1 WORKFLOW=examples/workflows/invert.json wrk -t2 -c16 -d"$DURATION" --latency -s bench/submit.lua "$base" | awk '/Requests\/sec/{r=$2} $1=="50%"{p50=$2} $1=="99%"{p99=$2} /Non-2xx/{e=$NF} END{printf "%10.0f/s  p50 %s  p99 %s%s\n", r, p50, p99, e ? "  NON-2XX: " e : ""}'
}
target/release/comfyui-sim --port 18188 >/dev/null 2>&1 & pids+=($!)
"$venv/bin/comfy-api-proxy" run --comfyui http://127.0.0.1:18188 --port 18789 --state-dir "$tmp/proxy" >"$tmp/proxy.log" 2>&1 & pids+=($!)
wait_for http://127.0.0.1:18789/api/v2/jobs
echo "== comfy-api-proxy 0.1.6 (simulator behind it)"
load http://127.0.0.1:18789
# A load test is not the tenant the default quota protects against (1,000 submits/s).
target/release/serverless-comfyui tenants set-quota --tenant default --data-dir "$tmp/dev" \
  --submits-per-second 1000000 --max-active-jobs 4000000000 >/dev/null
RUST_LOG=warn target/release/serverless-comfyui dev --no-runner --listen 127.0.0.1:18787 --data-dir "$tmp/dev" 2>"$tmp/dev.log" & pids+=($!)
wait_for http://127.0.0.1:18787/api/v2/health
echo "== serverless-comfyui dev"
load http://127.0.0.1:18787
