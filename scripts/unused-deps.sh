#!/usr/bin/env bash
# Fails when a crate declares a dependency its code never names: cargo-machete, pinned,
# installed into .tools/ (idempotent: reinstalled only when missing or another version).
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.9.2
machete=.tools/bin/cargo-machete
if ! "$machete" --version 2>/dev/null | grep -qx "$version"; then
  cargo install --quiet --locked --version "$version" --root .tools cargo-machete
fi
"$machete"
