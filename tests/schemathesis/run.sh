#!/usr/bin/env bash
# Fuzzes the API of a live `dev` against its own OpenAPI document with Schemathesis,
# every check on, twice: without keys (the loopback default tenant, on one data dir)
# and with a key (on another: once a key exists, `dev` asks every caller for one).
# Any failure fails the script.
#
# It builds nothing: it runs target/debug/serverless-comfyui (scripts/test.sh builds
# it). It creates its own venv (.venv-schemathesis) from the pinned requirements.
# hooks.py says which refusals the document can only state in words, and how the run
# checks that a request did break such a rule.
#
#   SCHEMATHESIS_MAX_EXAMPLES  cases per operation and phase (default 10)
#   SCHEMATHESIS_SEED          a seed, or `random` (default: a fixed seed, so a run repeats)
#   SCHEMATHESIS_HOOKS_LOG     a file to list the refusals hooks.py accepted
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="$PWD/target/debug/serverless-comfyui"
if [ ! -x "$bin" ]; then
  echo "run.sh: $bin is missing; build it first (cargo build -p serverless-comfyui)" >&2
  exit 1
fi
venv=.venv-schemathesis
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/schemathesis/requirements.txt

work=$(mktemp -d)
dev_pid=
stop_dev() {
  if [ -n "$dev_pid" ]; then
    kill "$dev_pid" 2>/dev/null || true
    wait "$dev_pid" 2>/dev/null || true
    dev_pid=
  fi
}
trap 'stop_dev; rm -rf "$work"' EXIT

# Starts `dev --no-runner` on a free loopback port over data dir $1; sets $base.
start_dev() {
  local data=$1 port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$bin" dev --no-runner --listen "127.0.0.1:$port" --data-dir "$data" >"$data.log" 2>&1 &
  dev_pid=$!
  base="http://127.0.0.1:$port"
  for _ in $(seq 1 150); do
    if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
      "$base/api/v2/health" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$dev_pid" 2>/dev/null; then
      cat "$data.log" >&2
      echo "run.sh: dev exited before answering" >&2
      exit 1
    fi
    sleep 0.2
  done
  cat "$data.log" >&2
  echo "run.sh: dev did not answer within 30 s" >&2
  exit 1
}

seed=${SCHEMATHESIS_SEED:-20261206}
seed_args=()
if [ "$seed" != random ]; then
  seed_args=(--seed "$seed")
fi

# One worker: Python 3.11 before 3.11.8 can fail parsing in two threads at once. Event
# streams stay open for 20 s; the short timeout ends them (a read timeout is no failure).
fuzz() {
  PYTHONPATH=tests/schemathesis SCHEMATHESIS_HOOKS=hooks \
  "$venv/bin/st" --config-file tests/schemathesis/schemathesis.toml run \
    "$base/api/v2/openapi.json" \
    --checks all \
    --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-10}" \
    "${seed_args[@]}" \
    --workers 1 \
    --request-timeout 2 \
    --generation-database none \
    --no-color \
    "$@"
}

status=0
echo "--- Schemathesis, without keys (the loopback default tenant)"
start_dev "$work/keyless"
fuzz || status=1
stop_dev

echo "--- Schemathesis, with an API key"
mkdir -p "$work/keyed"
key=$("$bin" keys create --tenant fuzz --data-dir "$work/keyed" | head -n 1)
start_dev "$work/keyed"
fuzz --header "Authorization: Bearer $key" || status=1
stop_dev
exit "$status"
