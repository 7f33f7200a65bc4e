#!/usr/bin/env bash
# Builds the four Lambda functions (submit, status, dispatch, webhooks) the way a
# user's deploy does: `sam build` over template.yaml, whose functions use
# `BuildMethod: rust-cargolambda` (a cargo-lambda release build of each `Binary`).
# Then zips each bootstrap as Lambda receives it and checks its size.
#
# Tools, pinned: cargo-lambda and the zig linker it brings (tests/lambda/requirements.txt)
# in .venv-lambda; aws-sam-cli in .venv-sam (scripts/lib/deploy-venvs.sh). Offline: no
# account, credentials or Docker engine. The build is for x86_64 by default (only that
# Rust standard library is installed here); LAMBDA_ARCH=arm64 builds for Graviton, the
# template's default Architecture, on a machine with the aarch64 target installed.
#
# Output: .aws-sam/build/<Name>Function/bootstrap (what `sam deploy` uploads), and
# target/lambda/<function>/bootstrap{,.zip} (for the cold-start bench). Prints each
# zip's size and fails if one exceeds 8 MB (cold start grows with it).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/deploy-venvs.sh
source scripts/lib/deploy-venvs.sh

if [ ! -x .venv-lambda/bin/python ]; then
  python3 -m venv .venv-lambda
fi
.venv-lambda/bin/pip install --quiet --disable-pip-version-check -r tests/lambda/requirements.txt
ensure_sam_venv
offline_aws
export PATH="$PWD/.venv-lambda/bin:$PATH"

case "${LAMBDA_ARCH:-x86_64}" in
  x86_64 | arm64) architecture=${LAMBDA_ARCH:-x86_64} ;;
  *) echo "LAMBDA_ARCH must be x86_64 or arm64" >&2; exit 2 ;;
esac

step "sam build (Architecture=$architecture)"
.venv-sam/bin/sam build --parameter-overrides "Architecture=$architecture"

target_dir="${CARGO_TARGET_DIR:-target}"
limit=$((8 * 1000 * 1000))
status=0
step "zips"
for f in submit status dispatch webhooks; do
  built=".aws-sam/build/${f^}Function/bootstrap"
  out="$target_dir/lambda/$f"
  mkdir -p "$out"
  cp "$built" "$out/bootstrap"
  rm -f "$out/bootstrap.zip"
  # Lambda runs the zip's `bootstrap`: executable, deflated, as `sam deploy` packs it.
  .venv-sam/bin/python - "$out/bootstrap" "$out/bootstrap.zip" <<'PY'
import sys, zipfile
source, zip_path = sys.argv[1], sys.argv[2]
info = zipfile.ZipInfo("bootstrap", date_time=(1980, 1, 1, 0, 0, 0))
info.external_attr = 0o100755 << 16
info.compress_type = zipfile.ZIP_DEFLATED
with open(source, "rb") as f, zipfile.ZipFile(zip_path, "w") as z:
    z.writestr(info, f.read(), compresslevel=9)
PY
  size=$(stat -c %s "$out/bootstrap.zip")
  awk -v f="$f" -v z="$out/bootstrap.zip" -v s="$size" 'BEGIN { printf "%-9s %s  %6.2f MB\n", f, z, s / 1e6 }'
  if [ "$size" -gt "$limit" ]; then
    echo "  $f: the zip exceeds 8 MB" >&2
    status=1
  fi
done
exit $status
