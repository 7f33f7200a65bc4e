"""The official comfy-sdk, unchanged, against `serverless-comfyui dev --no-runner`:
the API contract, with jobs that stay queued."""

import uuid

import pytest

from conftest import WORKFLOWS


def test_submit_refresh_list_and_cancel(api_client):
    wf = api_client.workflows.from_file(str(WORKFLOWS / "invert.json"))
    label = uuid.uuid4().hex
    job = api_client.submit(wf, metadata={"suite": "sdk", "run": label})
    assert job.id.startswith("job_")
    assert job.status == "queued"
    assert job.metadata == {"suite": "sdk", "run": label}

    job.refresh()
    assert job.status == "queued"

    listed = list(api_client.list_jobs(metadata={"run": label}))
    assert [s.id for s in listed] == [job.id]
    assert list(api_client.list_jobs(metadata={"run": "no-such-run"})) == []

    job.cancel()
    assert job.status == "canceled"
    job.refresh()
    assert job.status == "canceled"


def test_list_follows_cursors_across_pages(api_client):
    label = uuid.uuid4().hex
    wf = api_client.workflows.from_file(str(WORKFLOWS / "invert.json"))
    ids = [api_client.submit(wf, metadata={"page": label}).id for _ in range(5)]
    listed = [s.id for s in api_client.list_jobs(metadata={"page": label}, limit=2)]
    assert listed == list(reversed(ids))


def test_explicit_idempotency_key_never_makes_two_jobs(api_client):
    from comfy_sdk import IdempotencyKeyReuse  # noqa: F401  (exported name exists)

    wf = api_client.workflows.from_file(str(WORKFLOWS / "invert.json"))
    key = str(uuid.uuid4())
    label = uuid.uuid4().hex
    first = api_client.submit(wf, idempotency_key=key, metadata={"idem": label})
    second = api_client.submit(wf, idempotency_key=key, metadata={"idem": label})
    assert first.id == second.id
    assert [s.id for s in api_client.list_jobs(metadata={"idem": label})] == [first.id]


def test_ui_format_is_refused(api_client):
    from comfy_sdk import ComfyError

    with pytest.raises(ComfyError):
        wf = api_client.workflows.from_file(str(WORKFLOWS / "ui-format.json"))
        api_client.submit(wf)


def test_server_validation_error_reaches_the_caller(api_client):
    from comfy_sdk import ComfyError

    wf = api_client.workflows.from_json({"1": {"class_type": "A", "inputs": {"x": ["9", 0]}}})
    with pytest.raises(ComfyError) as caught:
        api_client.submit(wf)
    assert caught.value.code == "invalid_workflow"


def test_metadata_limits_reach_the_caller(api_client):
    from comfy_sdk import ComfyError

    wf = api_client.workflows.from_file(str(WORKFLOWS / "invert.json"))
    with pytest.raises(ComfyError) as caught:
        api_client.submit(wf, metadata={f"k{i}": "v" for i in range(17)})
    assert caught.value.code == "metadata_invalid"
