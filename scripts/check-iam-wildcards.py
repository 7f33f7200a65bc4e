"""Fails if an IAM Allow statement in the template grants a wildcard action, or any
action on a data service (DynamoDB, S3, SQS) on resource "*".

Usage: check-iam-wildcards.py TEMPLATE (run with the .venv-sam interpreter: it uses
cfn-lint's YAML loader, which understands the short intrinsic forms like !GetAtt).
Scoped patterns such as `${Bucket.Arn}/outputs/*` are allowed: they name the resource.
"""

import sys

from cfnlint.decode import decode

DATA_SERVICES = ("dynamodb:", "s3:", "sqs:")


def as_list(value):
    return value if isinstance(value, list) else [value]


def statements(resource):
    props = resource.get("Properties", {}) or {}
    policies = props.get("Policies", [])
    if resource.get("Type") == "AWS::IAM::Policy":
        policies = [props]
    for policy in as_list(policies):
        if isinstance(policy, dict):
            doc = policy.get("PolicyDocument", policy)
            yield from as_list(doc.get("Statement", []))


def main() -> int:
    template, matches = decode(sys.argv[1])
    if template is None:
        print(matches)
        return 2
    problems = []
    for name, resource in template.get("Resources", {}).items():
        for st in statements(resource):
            if not isinstance(st, dict) or st.get("Effect") != "Allow":
                continue
            actions = [a for a in as_list(st.get("Action", [])) if isinstance(a, str)]
            resources = as_list(st.get("Resource", []))
            for action in actions:
                if "*" in action:
                    problems.append(f"{name}: wildcard action {action!r}")
            if any(a.startswith(DATA_SERVICES) for a in actions) and "*" in resources:
                problems.append(f"{name}: data-service actions {actions} on resource '*'")
    for p in problems:
        print(p)
    print(f"IAM wildcard check: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
