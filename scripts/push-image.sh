#!/usr/bin/env bash
# Builds the GPU runner image (gpu-runner/Dockerfile) and pushes it to Amazon ECR, then
# prints the URI to give the stack as RunnerImageUri.
#
#   scripts/push-image.sh [--region REGION] [--repository NAME] [--tag TAG] [--no-push]
#                         [-- EXTRA DOCKER BUILD ARGS, e.g. --build-arg COMFYUI_COMMIT=...]
#
# Needs Docker (with BuildKit) and the AWS CLI v2 with credentials for the target
# account. Creates the repository on first use: tags immutable (a task always runs
# exactly the image it was given), scan on push, and a lifecycle policy keeping the
# last 3 images (ECR storage is billed per GB-month; see docs/deploy.md, Costs).
# Each build gets a fresh tag (UTC time + git commit), so an update of the stack with
# the new URI rolls the runners onto it.
set -euo pipefail
cd "$(dirname "$0")/.."

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
repository=serverless-comfyui-runner
tag="$(date -u +%Y%m%d-%H%M%S)-$(git rev-parse --short=12 HEAD 2>/dev/null || echo nogit)"
push=1
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --region) region=$2; shift 2 ;;
    --repository) repository=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --no-push) push=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$region" ]; then
  region=$(aws configure get region || true)
fi
if [ -z "$region" ]; then
  echo "no region: pass --region or set AWS_REGION" >&2
  exit 2
fi
if ! git diff --quiet HEAD -- 2>/dev/null; then
  tag="$tag-dirty"
fi

account=$(aws sts get-caller-identity --query Account --output text)
registry="$account.dkr.ecr.$region.amazonaws.com"
image="$registry/$repository:$tag"

if ! aws ecr describe-repositories --region "$region" --repository-names "$repository" >/dev/null 2>&1; then
  echo "creating ECR repository $repository in $region"
  aws ecr create-repository --region "$region" --repository-name "$repository" \
    --image-tag-mutability IMMUTABLE \
    --image-scanning-configuration scanOnPush=true >/dev/null
  aws ecr put-lifecycle-policy --region "$region" --repository-name "$repository" \
    --lifecycle-policy-text '{"rules":[{"rulePriority":1,"description":"keep the last 3 images","selection":{"tagStatus":"any","countType":"imageCountMoreThan","countNumber":3},"action":{"type":"expire"}}]}' >/dev/null
fi

# The GPU instances are x86_64: build for it whatever this machine is.
DOCKER_BUILDKIT=1 docker build --platform linux/amd64 -f gpu-runner/Dockerfile \
  -t "$image" "${extra[@]}" .

if [ "$push" = 1 ]; then
  aws ecr get-login-password --region "$region" |
    docker login --username AWS --password-stdin "$registry"
  docker push "$image"
fi

echo
echo "RunnerImageUri=$image"
echo "next: sam build && sam deploy --guided   (answer RunnerImageUri with the line above)"
echo "  (a deployed stack: replace RunnerImageUri in samconfig.toml's parameter_overrides, then sam deploy)"
