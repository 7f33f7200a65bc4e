"""Signed webhooks, checked by an independent implementation: a receiver verifies
every request with `standardwebhooks` from PyPI (the Standard Webhooks reference
library), not with anything of ours. `dev --webhooks-allow-private` lets the webhook
reach this loopback receiver; without the flag such a URL is refused."""

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from conftest import WORKFLOWS, _client, _start_dev, _stop

HOOKS = "/api/v2/x-serverless-comfyui/webhooks"


@pytest.fixture(scope="module")
def hooks_server(tmp_path_factory):
    proc, log, base_url = _start_dev(tmp_path_factory, "--webhooks-allow-private")
    yield base_url
    _stop(proc, log)


class Receiver:
    """An HTTP server on 127.0.0.1 that keeps what `standardwebhooks` verified."""

    def __init__(self):
        self.secret = None
        self.verified = []
        self.refused = []
        self.raw = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.raw.append((body, headers))
                try:
                    payload = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError as e:
                    receiver.refused.append(str(e))
                    self.send_response(401)
                else:
                    receiver.verified.append((headers["webhook-id"], payload))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self):
        self.server.shutdown()


def _post(url, body):
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def test_a_finished_job_is_delivered_signed_as_standard_webhooks_says(hooks_server, monkeypatch):
    receiver = Receiver()
    try:
        status, created = _post(
            hooks_server + HOOKS, {"url": receiver.url, "events": ["job.succeeded"]}
        )
        assert status == 201, created
        receiver.secret = created["secret"]
        assert receiver.secret.startswith("whsec_")

        with _client(hooks_server, monkeypatch) as client:
            wf = client.workflows.from_file(str(WORKFLOWS / "invert.json"))
            job = client.submit(wf, metadata={"suite": "webhooks"}).wait(timeout=120)
        assert job.status == "succeeded"

        deadline = time.time() + 30
        while not receiver.verified and time.time() < deadline:
            time.sleep(0.1)
        assert receiver.refused == []
        assert len(receiver.verified) == 1, receiver.raw
        webhook_id, payload = receiver.verified[0]
        assert webhook_id.startswith("msg_")
        assert payload["type"] == "job.succeeded"
        shown = _get(f"{hooks_server}/api/v2/jobs/{job.id}")
        data = payload["data"]
        assert data["id"] == job.id and data["status"] == "succeeded"
        assert data["metadata"] == {"suite": "webhooks"}
        assert payload["timestamp"] == shown["completed_at"]
        # The same job as GET shows it; output URLs are signed afresh on each read.
        assert [o["id"] for o in data["outputs"]] == [o["id"] for o in shown["outputs"]]
        assert {k: v for k, v in data.items() if k != "outputs"} == {
            k: v for k, v in shown.items() if k != "outputs"
        }

        # The verifier really checks: the same request with one byte changed fails.
        body, headers = receiver.raw[0]
        with pytest.raises(WebhookVerificationError):
            Webhook(receiver.secret).verify(body.replace(b"succeeded", b"succeedex"), headers)

        attempts = _get(f"{hooks_server}{HOOKS}/{created['id']}/deliveries")["attempts"]
        assert [(a["status_code"], a["state"]) for a in attempts] == [(204, "delivered")]
    finally:
        receiver.close()


def test_bad_webhook_input_gets_the_v2_envelope(hooks_server):
    for body, code in [
        ({"url": "not a url"}, "invalid_webhook_url"),
        ({"url": "https://example.com/x", "events": ["job.exploded"]}, "invalid_event_type"),
    ]:
        status, answer = _post(hooks_server + HOOKS, body)
        assert status == 422
        assert answer["error"]["code"] == code


def test_without_the_flag_a_loopback_url_is_refused(api_only_server):
    status, answer = _post(api_only_server + HOOKS, {"url": "http://127.0.0.1:9/hook"})
    assert status == 422
    assert answer["error"]["code"] == "invalid_webhook_url"
