"""Jobs run end to end in `dev` on the built-in ComfyUI simulator, driven by the
official comfy-sdk: outputs downloaded and their pixels checked."""

import uuid

from conftest import WORKFLOWS
from pngread import pixel, read_png, write_png


def test_invert_gives_cyan(client):
    wf = client.workflows.from_file(str(WORKFLOWS / "invert.json"))
    job = client.submit(wf, metadata={"suite": "runs"})
    job = job.wait(timeout=120)
    assert job.status == "succeeded", job.error
    outputs = job.get_outputs("3")
    assert len(outputs) == 1
    png = outputs[0].to_bytes()
    width, height, _, _ = read_png(png)
    assert (width, height) == (64, 64)
    assert pixel(png, 10, 10) == (0, 255, 255), "red inverted is cyan"
    assert outputs[0].content_type == "image/png"
    assert outputs[0].type == "image"


def test_events_reach_succeeded(client):
    wf = client.workflows.from_file(str(WORKFLOWS / "invert.json"))
    wf.set_input("1", "color", 0x00FF00)  # a fresh colour busts ComfyUI's cache
    job = client.submit(wf)
    from comfy_sdk import StatusChange

    seen = []
    for event in job.events():
        seen.append(type(event).__name__)
        if isinstance(event, StatusChange) and event.status in ("succeeded", "failed", "canceled"):
            assert event.status == "succeeded"
            break
    assert seen and seen[-1] == "StatusChange", seen
    job.refresh()
    assert job.status == "succeeded"


def test_load_blur_with_an_uploaded_asset(client, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(write_png(96, 64, (200, 40, 10)))
    asset = client.assets.from_file(str(photo))
    wf = client.workflows.from_file(str(WORKFLOWS / "load-blur.json"))
    wf.set_input("10", "image", asset)
    job = client.submit(wf, metadata={"suite": "runs", "run": uuid.uuid4().hex})
    job = job.wait(timeout=120)
    assert job.status == "succeeded", job.error
    outputs = [o for o in job.outputs if o.type == "image"]
    assert outputs, job.outputs
    png = outputs[0].to_bytes()
    # A flat colour stays that colour through blur and scale.
    assert pixel(png, 1, 1) == (200, 40, 10)
    # The same file again dedups: the SDK probes by hash before uploading.
    again = client.assets.from_file(str(photo))
    wf2 = client.workflows.from_file(str(WORKFLOWS / "load-blur.json"))
    wf2.set_input("10", "image", again)
    assert client.submit(wf2).wait(timeout=120).status == "succeeded"


def test_batch_two_outputs_lists_every_output(client):
    wf = client.workflows.from_file(str(WORKFLOWS / "batch-two-outputs.json"))
    job = client.submit(wf).wait(timeout=120)
    assert job.status == "succeeded", job.error
    by_node = {}
    for output in job.outputs:
        by_node.setdefault(output.node_id, []).append(output)
    counts = sorted(len(v) for v in by_node.values())
    assert counts == [3, 3], {k: [o.name for o in v] for k, v in by_node.items()}
    for outputs in by_node.values():
        for output in outputs:
            assert output.to_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
