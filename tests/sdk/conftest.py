"""Starts `serverless-comfyui dev` for the SDK tests: one server per test module,
on a free loopback port, with its own data directory."""

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "examples" / "workflows"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> Path:
    explicit = os.environ.get("SERVERLESS_COMFYUI_BIN")
    path = Path(explicit) if explicit else ROOT / "target" / "debug" / "serverless-comfyui"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build -p serverless-comfyui` first")
    return path


def _start_dev(tmp_path_factory, *extra):
    port = _free_port()
    data_dir = tmp_path_factory.mktemp("data")
    log = open(data_dir / "dev.log", "w")
    proc = subprocess.Popen(
        [str(_binary()), "dev", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/api/v2/health", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"dev did not start; see {data_dir / 'dev.log'}")
        time.sleep(0.1)
    return proc, log, base_url


def _stop(proc, log):
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def dev_server(tmp_path_factory):
    """`dev` with its runner on the built-in ComfyUI simulator: jobs really run."""
    proc, log, base_url = _start_dev(tmp_path_factory)
    yield base_url
    _stop(proc, log)


@pytest.fixture(scope="module")
def api_only_server(tmp_path_factory):
    """`dev --no-runner`: jobs are accepted and stay queued, for API-contract tests."""
    proc, log, base_url = _start_dev(tmp_path_factory, "--no-runner")
    yield base_url
    _stop(proc, log)


def _client(base_url, monkeypatch):
    from comfy_sdk import Comfy

    monkeypatch.setenv("COMFY_BASE_URL", base_url)
    monkeypatch.delenv("COMFY_API_KEY", raising=False)
    return Comfy()


@pytest.fixture
def client(dev_server, monkeypatch):
    with _client(dev_server, monkeypatch) as c:
        yield c


@pytest.fixture
def api_client(api_only_server, monkeypatch):
    with _client(api_only_server, monkeypatch) as c:
        yield c
