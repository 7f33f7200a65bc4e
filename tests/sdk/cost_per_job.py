"""AWS calls and billed units per job, counted on the moto end to end, in dollars per
1,000 jobs at list prices (GPU time excluded).

    .venv/bin/python tests/sdk/cost_per_job.py [--jobs 12] [--concurrency 1]
        [--workflow txt2img-sd15|invert] [--step-ms 500]

(after the builds aws_stack.py names; the last test of test_aws.py runs a small
measurement with the same code). Starts the stack (aws_stack.Stack), runs one job to
start a runner, then runs `--jobs` jobs with comfy-sdk, `--concurrency` at a time
(default: 20-step txt2img at 500 ms a step on the simulator, about 11 s each), each
waited for as comfy-sdk waits (`Job.wait`: polls `GET /jobs/{id}` at 0.5 s growing
x1.5 to 5 s) and its output downloaded once through its presigned URL. Everything
the product does for them in that window counts: submit, status and dispatch
invocations, Lambda's SQS poller, the runner, the client's S3 downloads. The tick is
a cost per minute, not per job: shown apart, per month. The ECS agent's calls
(played by the local stack) and the set-up are not counted.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from aws_count import diff  # noqa: E402

# us-east-1 list prices, as this project recorded them in December 2026 (no network
# here to re-read them): DynamoDB on-demand after the 1 November 2024 cut; Lambda arm64.
PRICES = {
    "dynamodb_wru": 0.625 / 1e6,
    "dynamodb_rru": 0.125 / 1e6,
    "lambda_request": 0.20 / 1e6,
    "lambda_gb_s": 0.0000133334,
    "http_api_request": 1.00 / 1e6,
    "sqs_request": 0.40 / 1e6,
    "s3_put": 0.005 / 1000,  # PUT, COPY, POST, LIST
    "s3_get": 0.0004 / 1000,  # GET, HEAD and the rest
}
LAMBDA_GB = 0.5  # template.yaml: MemorySize 512
MINUTES_A_MONTH = 43_200
PER_JOB_CALLERS = {"submit", "status", "dispatch", "esm", "runner", "client"}


def s3_price(op: str) -> float:
    """S3's two request tiers (DELETE is free)."""
    name = op.split()[0]
    if name.startswith("Delete") or name == "DELETE":
        return 0.0
    if name.startswith(("Put", "Post", "Copy", "List", "Create", "Complete", "Upload")) or name in ("PUT", "POST"):
        return PRICES["s3_put"]
    if name == "GET" and " bucket" in op:
        return PRICES["s3_put"]  # a listing
    return PRICES["s3_get"]


def dollars(service: str, op: str, row: dict) -> float:
    if service == "dynamodb":
        return row["wcu"] * PRICES["dynamodb_wru"] + row["rcu"] * PRICES["dynamodb_rru"]
    if service == "sqs":
        return row["requests"] * PRICES["sqs_request"]
    if service == "s3":
        return row["requests"] * s3_price(op)
    return 0.0  # ECS API calls are free


def lambda_rows(stats_delta: dict) -> list[tuple[str, float, float]]:
    """(what, invocations, $) from the local stack's invocation counts and durations."""
    rows = []
    for name, v in sorted(stats_delta.items()):
        if name == "apigw":
            rows.append(("API Gateway HTTP API requests", v["count"], v["count"] * PRICES["http_api_request"]))
            continue
        # Lambda bills each invocation's duration rounded up to the millisecond.
        avg = v["total_ms"] / v["count"] if v["count"] else 0
        gb_s = v["count"] * math.ceil(avg) / 1000 * LAMBDA_GB
        cost = v["count"] * PRICES["lambda_request"] + gb_s * PRICES["lambda_gb_s"]
        rows.append((f"{name} (avg {avg:.0f} ms, {LAMBDA_GB} GB)", v["count"], cost))
    return rows


def stats_diff(after: dict, before: dict, keep) -> dict:
    out = {}
    for name, v in after["calls"].items():
        if not keep(name):
            continue
        b = before["calls"].get(name, {"count": 0, "total_ms": 0.0})
        if v["count"] - b["count"]:
            out[name] = {"count": v["count"] - b["count"], "total_ms": v["total_ms"] - b["total_ms"]}
    return out


def run_job(client, workflow: str, n: int):
    from conftest import WORKFLOWS

    wf = client.workflows.from_file(str(WORKFLOWS / f"{workflow}.json"))
    # A fresh input each time: ComfyUI would serve a repeat from its cache.
    if workflow == "invert":
        wf.set_input("1", "color", (0x010203 * (n + 7)) & 0xFFFFFF)
    else:
        wf.set_input("3", "seed", 1000 + n)
    started = time.monotonic()
    job = client.submit(wf).wait(timeout=600)
    seen_done = time.monotonic() - started
    assert job.status == "succeeded", job.error
    assert job.outputs[0].to_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return seen_done


def measure(stack, client, jobs: int = 12, concurrency: int = 1, workflow: str = "txt2img-sd15") -> dict:
    """Runs a warm-up job, then `jobs` jobs; returns the counts of that window."""
    run_job(client, workflow, 10_000)
    before, stats_before = stack.proxy.counts.snapshot(), stack.stats()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda i: run_job(client, workflow, i), range(jobs)))
    after, stats_after = stack.proxy.counts.snapshot(), stack.stats()
    window = diff(after, before)
    ticks_all = diff(after, {})
    return {
        "jobs": jobs,
        "workflow": workflow,
        "latencies": latencies,
        "aws": {k: v for k, v in window.items() if k[0] in PER_JOB_CALLERS},
        "lambda": stats_diff(stats_after, stats_before, lambda n: n != "lambda:dispatch:tick"),
        "tick_aws": {k: v for k, v in ticks_all.items() if k[0] == "tick"},
        "tick_lambda": stats_diff(stats_after, {"calls": {}}, lambda n: n == "lambda:dispatch:tick"),
    }


def report(m: dict) -> tuple[str, float]:
    """The table (markdown) and the total $ per 1,000 jobs."""
    n = m["jobs"]
    lines = [
        f"Per job, averaged over {n} `{m.get('workflow', 'invert')}` jobs; $ per 1,000 jobs at the list prices.",
        "",
        "| caller | service | operation | requests/job | WCU/job | RCU/job | avg item bytes | $/1,000 jobs |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    total = 0.0
    by_service: dict[str, float] = {}
    rows = []
    for (caller, service, op), row in m["aws"].items():
        cost = dollars(service, op, row) / n * 1000
        rows.append((cost, caller, service, op, row))
    for cost, caller, service, op, row in sorted(rows, key=lambda r: (-r[0], r[1], r[3])):
        total += cost
        by_service[service] = by_service.get(service, 0) + cost
        items = row["item_bytes"] / row["requests"] if service == "dynamodb" and row["requests"] else 0
        lines.append(
            f"| {caller} | {service} | {op} | {row['requests'] / n:.2f} | {row['wcu'] / n:.2f} | "
            f"{row['rcu'] / n:.2f} | {items:.0f} | {cost:.5f} |"
        )
    for what, count, cost in lambda_rows(m["lambda"]):
        c = cost / n * 1000
        total += c
        service = "API Gateway" if what.startswith("API") else "Lambda"
        by_service[service] = by_service.get(service, 0) + c
        lines.append(f"| — | {service} | {what} | {count / n:.2f} | | | | {c:.5f} |")
    lines += ["", "| service | $/1,000 jobs |", "|---|---:|"]
    for service, cost in sorted(by_service.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {service} | {cost:.5f} |")
    lines.append(f"| **total** | **{total:.4f}** |")
    if m.get("latencies"):
        lat = sorted(m["latencies"])
        lines += [
            "",
            f"Submit to terminal as the client saw it (its polls decide how many there are): "
            f"mean {sum(lat) / len(lat):.1f} s, min {lat[0]:.1f} s, max {lat[-1]:.1f} s.",
        ]

    ticks = sum(v["count"] for v in m["tick_lambda"].values())
    if ticks:
        tick_cost = sum(dollars(s, o, row) for (_, s, o), row in m["tick_aws"].items()) / ticks
        tick_lambda = sum(c for _, _, c in lambda_rows(m["tick_lambda"])) / ticks
        per_tick = ", ".join(
            f"{o} {row['requests'] / ticks:.1f}" for (_, s, o), row in sorted(m["tick_aws"].items())
        )
        lines += [
            "",
            f"The tick (not per job; {ticks} ticks measured): per tick {per_tick}; "
            f"${tick_cost:.7f} of AWS calls + ${tick_lambda:.7f} of Lambda = "
            f"${(tick_cost + tick_lambda) * MINUTES_A_MONTH:.3f} a month at one tick a minute.",
        ]
    return "\n".join(lines), total


def main():
    from comfy_sdk import Comfy
    import os

    from aws_stack import Stack

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--workflow", choices=["invert", "txt2img-sd15"], default="txt2img-sd15")
    parser.add_argument("--step-ms", type=int, default=500, help="the simulator's time per sampler step")
    parser.add_argument("--functions-profile", choices=["debug", "release"], default="debug",
                        help="the build of the functions (local_stack) whose durations are billed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logs:
        stack = Stack(Path(logs), step_ms=args.step_ms, functions_profile=args.functions_profile)
        try:
            os.environ["COMFY_BASE_URL"] = stack.url
            os.environ["COMFY_API_KEY"] = stack.api_key
            with Comfy() as client:
                m = measure(stack, client, args.jobs, args.concurrency, args.workflow)
        finally:
            stack.stop()
    table, total = report(m)
    print(table)
    print(f"\nTotal: ${total:.4f} per 1,000 jobs (target: at most $0.05), GPU time excluded.")


if __name__ == "__main__":
    main()
