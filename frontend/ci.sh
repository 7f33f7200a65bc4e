#!/usr/bin/env bash
# The frontend's checks: install, type-check, unit tests, build; with --e2e, the browser suite.
#
#   bash frontend/ci.sh            # unit tests + build
#   bash frontend/ci.sh --e2e      # ... then the browser suite against E2E_BASE_URL
#
# The browser suite needs a running `serverless-comfyui dev` (which serves the app it embeds)
# (default E2E_BASE_URL=http://127.0.0.1:8787). Or set E2E_SERVER_CMD to a command that starts
# one; this script then starts it, waits for /api/v2/health, and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")"

E2E=0
for a in "$@"; do
  case "$a" in
    --e2e) E2E=1 ;;
    *) echo "unknown argument: $a" >&2; exit 2 ;;
  esac
done

if [ "$E2E" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  echo "== installing chromium (Debian package)"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

echo "== npm ci"
npm ci --no-audit --no-fund --loglevel=error

echo "== type-check"
npm run -s typecheck

echo "== unit tests (vitest)"
npx vitest run

echo "== build (frontend/dist)"
npm run -s build

if [ "$E2E" = 1 ]; then
  BASE="${E2E_BASE_URL:-http://127.0.0.1:8787}"
  SERVER_PID=""
  if [ -n "${E2E_SERVER_CMD:-}" ]; then
    echo "== starting: $E2E_SERVER_CMD"
    bash -c "$E2E_SERVER_CMD" > "${TMPDIR:-/tmp}/scui-e2e-server.log" 2>&1 &
    SERVER_PID=$!
    trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true' EXIT
  fi
  echo "== waiting for $BASE/api/v2/health"
  for _ in $(seq 1 120); do
    if curl -fsS "$BASE/api/v2/health" >/dev/null 2>&1; then break; fi
    sleep 1
  done
  curl -fsS "$BASE/api/v2/health" >/dev/null || { echo "no server at $BASE" >&2; exit 1; }
  echo "== browser suite (chromium + playwright-core) against $BASE"
  E2E_BASE_URL="$BASE" node e2e/run.mjs
fi
