"""The deployed product on this machine, over moto, for tests/sdk/test_aws.py and
tests/sdk/cost_per_job.py:

    moto_server  <-  counting proxy (aws_count.py)  <-  local_stack  ->  gpu-runner-aws
                                                            ^                 |
    comfy-sdk  --- HTTP API routes (submit, status) --------+                 v
                                                                      comfyui-sim

moto_server comes from .venv-moto (scripts/moto.sh installs it); the binaries from
target/debug (`cargo build -p functions-common --example local_stack`,
`cargo build -p gpu-runner --no-default-features --features aws --bin gpu-runner-aws`,
`cargo build -p comfyui-sim`; scripts/test.sh builds them). Every process is started
here and stopped by its PID; logs go to the given directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from aws_count import Proxy

ROOT = Path(__file__).resolve().parents[2]
DEBUG = ROOT / "target" / "debug"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _need(path: Path, build: str) -> Path:
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `{build}` first")
    return path


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float = 60):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"{what} did not answer at {url}")
        time.sleep(0.1)


class Stack:
    """moto, the counting proxy, the simulator and the local stack, started in order."""

    def __init__(self, logs: Path, step_ms: int = 50, tick_seconds: int = 5, runner_idle_seconds: int = 30,
                 functions_profile: str = "debug"):
        self.logs = logs
        # The functions' build: their durations are billed, so the cost benchmark runs
        # them as deployed (release); the tests take the debug build they already have.
        self.functions_profile = functions_profile
        self.procs: list[subprocess.Popen] = []
        self.files = []
        try:
            self._start(step_ms, tick_seconds, runner_idle_seconds)
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        self.files.append(log)
        proc = subprocess.Popen(argv, stderr=log, stdin=subprocess.DEVNULL, **kw)
        self.procs.append(proc)
        return proc

    def _start(self, step_ms, tick_seconds, runner_idle_seconds):
        # moto_server through the wrapper that makes DynamoDB's conditional writes
        # atomic, as on AWS (tests/aws/moto_server.py says why).
        python = _need(ROOT / ".venv-moto" / "bin" / "python", "scripts/moto.sh")
        wrapper = ROOT / "tests" / "aws" / "moto_server.py"
        port = free_port()
        proc = self._spawn(
            "moto",
            [str(python), str(wrapper), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
        )
        _wait_http(f"http://127.0.0.1:{port}/moto-api/", proc, "moto_server")
        self.proxy = Proxy(f"127.0.0.1:{port}").start()

        sim = _need(DEBUG / "comfyui-sim", "cargo build -p comfyui-sim")
        sim_port = free_port()
        proc = self._spawn(
            "comfyui-sim",
            [str(sim), "--port", str(sim_port), "--step-ms", str(step_ms),
             "--checkpoint", "v1-5-pruned-emaonly.safetensors"],
            stdout=subprocess.DEVNULL,
        )
        self.comfyui_url = f"http://127.0.0.1:{sim_port}"
        _wait_http(f"{self.comfyui_url}/system_stats", proc, "comfyui-sim")

        release = self.functions_profile == "release"
        stack = _need(ROOT / "target" / self.functions_profile / "examples" / "local_stack",
                      "cargo build" + (" --release" if release else "") + " -p functions-common --example local_stack")
        runner = _need(DEBUG / "gpu-runner-aws",
                       "cargo build -p gpu-runner --no-default-features --features aws --bin gpu-runner-aws")
        env = dict(os.environ)
        env.update({
            "SERVERLESS_COMFYUI_MOTO_ENDPOINT": self.proxy.url,
            "LOCAL_STACK_RUNNER_BIN": str(runner),
            "LOCAL_STACK_COMFYUI_URL": self.comfyui_url,
            "LOCAL_STACK_TICK_SECONDS": str(tick_seconds),
            "LOCAL_STACK_RUNNER_IDLE_SECONDS": str(runner_idle_seconds),
        })
        for k in [k for k in env if k.startswith("AWS_")]:
            del env[k]
        proc = self._spawn("local_stack", [str(stack)], env=env, stdout=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"local_stack did not start; see {self.logs / 'local_stack.log'}")
        self.info = json.loads(line)
        self.url = self.info["url"]
        self.api_key = self.info["api_key"]
        self.local_stack = proc

    def stats(self) -> dict:
        with urllib.request.urlopen(f"{self.url}/_local/stats", timeout=5) as r:
            return json.loads(r.read())

    def stop(self):
        # The local stack first: it hands SIGTERM on to its runners and waits for them.
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if getattr(self, "proxy", None):
            self.proxy.shutdown()
            self.proxy.server_close()
        for f in self.files:
            f.close()
