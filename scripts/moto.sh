#!/usr/bin/env bash
# Installs moto_server (pinned in tests/aws/requirements.txt) into its own venv,
# .venv-moto, for the crates/aws tests. Idempotent: creates the venv if missing, then
# lets pip check the pin (a no-op when it is satisfied). The tests start and stop the
# server themselves (crates/aws/tests/common/mod.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-moto/bin/python ]; then
  python3 -m venv .venv-moto
fi
.venv-moto/bin/pip install --quiet --disable-pip-version-check -r tests/aws/requirements.txt
