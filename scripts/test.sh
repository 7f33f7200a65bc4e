#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, the Rust suites, and the Python
# suite that drives `serverless-comfyui dev` with the official comfy-sdk.
# Works on a fresh machine: it creates its own Python venv from pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --workspace --locked

step "Python suite: comfy-sdk against dev"
cargo build -p serverless-comfyui --locked
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
.venv/bin/python -m pytest -q tests/sdk

if [ -x frontend/ci.sh ]; then
  step "frontend"
  frontend/ci.sh
fi
