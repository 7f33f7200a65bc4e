#!/usr/bin/env bash
# Builds the four Lambda functions (submit, status, dispatch, webhooks) as deployable zips with
# cargo-lambda, as `sam build` does, and checks their size.
#
# cargo-lambda (pinned in tests/lambda/requirements.txt, with the zig linker it brings)
# goes into its own venv, .venv-lambda. The build is a release build for x86_64 by
# default; LAMBDA_ARCH=arm64 builds for Graviton (the template's default Architecture).
# Prints each zip's size and fails if one exceeds 8 MB (cold start grows with it).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv-lambda/bin/python ]; then
  python3 -m venv .venv-lambda
fi
.venv-lambda/bin/pip install --quiet --disable-pip-version-check -r tests/lambda/requirements.txt
export PATH="$PWD/.venv-lambda/bin:$PATH"

case "${LAMBDA_ARCH:-x86_64}" in
  x86_64) arch=--x86-64 ;;
  arm64) arch=--arm64 ;;
  *) echo "LAMBDA_ARCH must be x86_64 or arm64" >&2; exit 2 ;;
esac

functions=(submit status dispatch webhooks)
bins=()
for f in "${functions[@]}"; do bins+=(--bin "$f"); done
cargo lambda build --release --locked "$arch" --output-format zip "${bins[@]}"

target_dir="${CARGO_TARGET_DIR:-target}"
limit=$((8 * 1000 * 1000))
status=0
for f in "${functions[@]}"; do
  zip="$target_dir/lambda/$f/bootstrap.zip"
  size=$(stat -c %s "$zip")
  awk -v f="$f" -v z="$zip" -v s="$size" 'BEGIN { printf "%-9s %s  %6.2f MB\n", f, z, s / 1e6 }'
  if [ "$size" -gt "$limit" ]; then
    echo "  $f: the zip exceeds 8 MB" >&2
    status=1
  fi
done
exit $status
