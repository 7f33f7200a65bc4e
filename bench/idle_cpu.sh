#!/usr/bin/env bash
# Idle CPU of `serverless-comfyui dev`: no jobs, no clients. Starts dev over a fresh
# data dir, lets it settle, then reads utime+stime of the process (and any children,
# e.g. runners) from /proc over a window and prints the ticks and % of one core.
#
#   bench/idle_cpu.sh [BINARY] [SECONDS]     (default target/debug/serverless-comfyui, 60)
set -euo pipefail
bin=${1:-target/debug/serverless-comfyui}
window=${2:-60}
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin" dev --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/api/v2/health" >/dev/null 2>&1 && break
  sleep 0.1
done
sleep 5
# utime + stime (fields 14, 15) of the process and its live children.
ticks() {
  local total=0 p
  for p in $pid $(pgrep -P $pid || true); do
    [ -r /proc/$p/stat ] || continue
    total=$((total + $(awk '{print $14 + $15}' /proc/$p/stat)))
  done
  echo $total
}
wakeups() { # voluntary context switches of every thread: how often it wakes
  cat /proc/$pid/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s}'
}
hz=$(getconf CLK_TCK)
t0=$(ticks); w0=$(wakeups)
sleep "$window"
t1=$(ticks); w1=$(wakeups)
used=$((t1 - t0))
awk -v u=$used -v hz=$hz -v s=$window -v w=$((w1 - w0)) 'BEGIN {
  printf "idle over %ds: %d ticks (%.2f%% of one core), %d thread wake-ups (%.1f/s)\n", s, u, 100 * u / hz / s, w, w / s
}'
