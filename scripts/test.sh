#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, the Rust suites, the dispatch
# simulation's short check, `sam build` of the Lambda functions
# (scripts/lambda-build.sh), the Python suite that drives `serverless-comfyui dev`
# and the AWS half on moto (tests/sdk/test_aws.py) with the official comfy-sdk, a
# Schemathesis run of dev's OpenAPI document, the offline deployment lints
# (scripts/lint-deploy.sh), and the web app's suites.
# Works on a fresh machine: it creates its own Python venv from pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# The build embeds the web app (cli/build.rs, with npm); the tests check it is there.
export SERVERLESS_COMFYUI_REQUIRE_WEB=1

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unused dependencies (cargo-machete, pinned)"
scripts/unused-deps.sh

step "cargo test"
# crates/aws tests run against moto_server, installed into .venv-moto.
scripts/moto.sh
cargo test --workspace --locked

step "dispatch simulation (short): our scaling policy against a queue-depth alarm"
# One simulated day through the real dispatcher; fails unless our policy beats the
# baseline on p95 queue wait at no more GPU-hours (docs/costs.md has the full run).
cargo run -p local --example dispatch_sim --locked -- --short --check

step "Lambda functions: sam build (rust-cargolambda, x86_64), zips under 8 MB"
# aws-sam-cli and cargo-lambda (pinned) go into .venv-sam and .venv-lambda; the
# release build shares ./target.
scripts/lambda-build.sh

step "Python suite: comfy-sdk against dev, and against the AWS half on moto"
cargo build -p serverless-comfyui --locked
# tests/sdk/test_aws.py: the functions' routers and handler behind a local API Gateway,
# SQS event source and ECS agent (an example, not shipped), the runner's AWS entry, the
# ComfyUI simulator, and moto_server (.venv-moto, installed above by scripts/moto.sh).
cargo build -p functions-common --example local_stack --locked
cargo build -p gpu-runner --no-default-features --features aws --bin gpu-runner-aws --locked
cargo build -p comfyui-sim --bin comfyui-sim --locked
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
.venv/bin/python -m pytest -q tests/sdk

step "Schemathesis: the OpenAPI document against dev, with and without a key"
tests/schemathesis/run.sh

step "deployment: cfn-lint, sam validate --lint, checkov, hadolint (offline)"
scripts/lint-deploy.sh

step "frontend: type-check, unit tests, build, then the browser suite against dev"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
e2e_data=$(mktemp -d)
trap 'rm -rf "$e2e_data"' EXIT
# The browser suite drives the app as users get it: embedded in the binary.
E2E_SERVER_CMD="exec $PWD/target/debug/serverless-comfyui dev --listen 127.0.0.1:$port --data-dir $e2e_data" \
E2E_BASE_URL="http://127.0.0.1:$port" \
E2E_ARTIFACTS="$PWD/artifacts/frontend" \
  bash frontend/ci.sh --e2e
