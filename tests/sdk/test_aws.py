"""End to end on moto: the official comfy-sdk against the deployed product's code.

The `submit` and `status` routers behind a local HTTP API, the `dispatch` handler on
the wake queue's events and on a tick, `gpu-runner-aws` processes started for the
tasks `RunTask` records in moto's ECS, each running its job on the ComfyUI simulator,
outputs downloaded through presigned URLs from moto's S3 (aws_stack.py has the
picture). A counting proxy in front of moto tells which process made which AWS call,
so the tests can check the path a job took, not only its result.

Where moto is not AWS: S3 checks no signatures (a presigned URL that works here
proves the redirect and the key, not the signature: crates/aws unit-tests that);
ECS runs nothing (the local stack plays the ECS agent); tasks are placed on moto's
`FARGATE` provider, which needs no container instance (the launcher's request is
the same whatever the provider's name).
"""

import struct
import time
import uuid
import zlib

import httpx
import pytest

from aws_count import diff
from aws_stack import Stack
from conftest import WORKFLOWS
from pngread import pixel, read_png, write_png

# Above the 4 MiB a Lambda takes in a request: it must go through the upload extension.
LARGE = 5 * 1024 * 1024


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # 300 ms a sampler step: the 20-step txt2img job runs for ~6 s, long enough to cancel.
    s = Stack(tmp_path_factory.mktemp("aws"), step_ms=300)
    yield s
    s.stop()


@pytest.fixture
def client(stack, monkeypatch):
    from comfy_sdk import Comfy

    monkeypatch.setenv("COMFY_BASE_URL", stack.url)
    monkeypatch.setenv("COMFY_API_KEY", stack.api_key)
    with Comfy() as c:
        yield c


def calls(delta, caller=None, service=None, op=None):
    return sum(
        row["requests"]
        for (c, s, o), row in delta.items()
        if (caller is None or c == caller) and (service is None or s == service) and (op is None or o == op)
    )


def test_a_job_runs_on_a_runner_task_and_its_output_comes_from_s3(stack, client):
    before = stack.proxy.counts.snapshot()
    stats_before = stack.stats()
    wf = client.workflows.from_file(str(WORKFLOWS / "invert.json"))
    job = client.submit(wf, metadata={"suite": "aws"})
    job = job.wait(timeout=120)
    assert job.status == "succeeded", job.error
    outputs = job.get_outputs("3")
    assert len(outputs) == 1
    png = outputs[0].to_bytes()
    assert read_png(png)[:2] == (64, 64)
    assert pixel(png, 10, 10) == (0, 255, 255), "red inverted is cyan"

    delta = diff(stack.proxy.counts.snapshot(), before)
    stats = stack.stats()
    # submit wrote the job (DynamoDB transaction, workflow in S3, work and wake messages).
    assert calls(delta, "submit", "dynamodb", "TransactWriteItems") >= 1, delta
    assert calls(delta, "submit", "sqs", "SendMessage") >= 2, delta
    # the wake reached dispatch, which started a runner task on ECS...
    assert stats["calls"]["lambda:dispatch:wake"]["count"] > stats_before["calls"].get("lambda:dispatch:wake", {}).get("count", 0)
    assert calls(delta, "dispatch", "ecs", "RunTask") >= 1, delta
    assert stats["runners_started"] >= 1
    # ...whose runner, on the AWS adapters, took the job and stored its output in S3...
    assert calls(delta, "runner", "sqs", "ReceiveMessage") >= 1, delta
    assert calls(delta, "runner", "s3", "PutObject") >= 1, sorted(delta)
    # ...which the client downloaded by the presigned URL status redirected it to.
    assert calls(delta, "client", "s3", "GetObject (presigned)") >= 1, delta
    assert calls(delta, "status", "dynamodb") >= 1, delta


def large_png(colour) -> bytes:
    """A flat-colour PNG made large by a text chunk (ComfyUI reads only the pixels)."""
    png = write_png(96, 64, colour)
    text = b"Comment\0" + b"x" * LARGE
    chunk = struct.pack(">I", len(text)) + b"tEXt" + text + struct.pack(">I", zlib.crc32(b"tEXt" + text))
    # Before IEND, the last 12 bytes.
    return png[:-12] + chunk + png[-12:]


def test_a_large_asset_goes_through_the_upload_extension(stack, client, tmp_path):
    colour = (30, 90, 200)
    big = large_png(colour)
    path = tmp_path / "big.png"
    path.write_bytes(big)

    # Through the Lambda, a file this size is refused with a pointer to the extension.
    with pytest.raises(Exception) as refused:
        client.assets.from_file(str(path)).commit()
    assert "/api/v2/x-serverless-comfyui/uploads" in str(refused.value), refused.value

    before = stack.proxy.counts.snapshot()
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.url, headers=auth, timeout=60) as http:
        r = http.post(
            "/api/v2/x-serverless-comfyui/uploads",
            json={"file_path": "big.png", "content_type": "image/png", "size_bytes": len(big)},
        )
        assert r.status_code == 201, r.text
        upload = r.json()
        assert upload["upload_method"] == "PUT"
        # Straight to S3: the bearer token is not sent there.
        put = httpx.put(upload["upload_url"], content=big, headers={"Content-Type": "image/png"}, timeout=60)
        assert put.status_code == 200, put.text
        complete = upload["complete_url"]
        r = http.post(complete)
        assert r.status_code in (200, 201), r.text
        asset_id = r.json()["id"]
    delta = diff(stack.proxy.counts.snapshot(), before)
    assert calls(delta, "client", "s3", "PutObject (presigned)") == 1, delta

    asset = client.assets.get(asset_id)
    wf = client.workflows.from_file(str(WORKFLOWS / "load-blur.json"))
    wf.set_input("10", "image", asset)
    job = client.submit(wf, metadata={"run": uuid.uuid4().hex}).wait(timeout=120)
    assert job.status == "succeeded", job.error
    image = [o for o in job.outputs if o.type == "image"][0].to_bytes()
    assert pixel(image, 1, 1) == colour


def test_a_cancel_lands_on_a_running_job(stack, client):
    wf = client.workflows.from_file(str(WORKFLOWS / "txt2img-sd15.json"))
    wf.set_input("3", "seed", int(time.time()))  # a fresh seed busts ComfyUI's cache
    job = client.submit(wf)
    deadline = time.time() + 90
    while job.status != "running":
        assert time.time() < deadline, f"job never ran: {job.status}"
        time.sleep(0.3)
        job.refresh()
    job.cancel()
    job = job.wait(timeout=60)
    assert job.status == "canceled"
    # It stays canceled: the runner did not commit a result after the cancel.
    time.sleep(3)
    job.refresh()
    assert job.status == "canceled"
    assert not [o for o in job.outputs if o.type == "image"]


def test_calls_and_billed_units_per_job_are_counted(stack, client, capsys):
    """The cost benchmark's measurement (cost_per_job.py), small: every part of a job's
    path shows up in the count, and the table prints (run with -s to see it)."""
    from cost_per_job import measure, report

    m = measure(stack, client, jobs=3, concurrency=1, workflow="txt2img-sd15")
    callers = {caller for caller, _, _ in m["aws"]}
    assert {"submit", "status", "dispatch", "runner", "client"} <= callers, callers
    assert m["lambda"]["apigw"]["count"] >= 3 * 3  # submit, >= 1 poll, /content per job
    runner_writes = sum(r["wcu"] for (c, s, _), r in m["aws"].items() if c == "runner" and s == "dynamodb")
    assert runner_writes > 0
    # A ~6 s job: the runner once spun on ReceiveMessage (a 100 ms wait is a short
    # poll on SQS) while reserving the next job, ~100 calls a job, then ~20 paced at
    # 500 ms; now every receive is a 20 s long poll in its own task
    # (aws_env::RECEIVE_WAIT, moto included): one that brings the next job, and
    # about one per 20 s that finds nothing.
    receives = m["aws"][("runner", "sqs", "ReceiveMessage")]["requests"] / m["jobs"]
    assert receives <= 6, receives
    table, total = report(m)
    with capsys.disabled():
        print("\n" + table + f"\n\nTotal: ${total:.4f} per 1,000 jobs")
    assert 0 < total
