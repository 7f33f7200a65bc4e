#!/usr/bin/env python3
"""Memory of `dev` under the two loads of issue 17 (M1, M5).

Starts `serverless-comfyui dev --no-runner` on a fresh data dir and measures, from
/proc/<pid>/status:

- idle connections: VmRSS before and after opening N idle TCP connections (each sends
  nothing), divided by N: the cost of one held connection;
- large submits: VmHWM (peak RSS) before and after POSTing a JSON workflow of about
  SIZE MB, one at a time, then CONCURRENT at once.

Usage:
    python3 bench/memory.py [--bin target/release/serverless-comfyui]
                            [--connections 2000] [--size-mb 10] [--concurrent 8]
                            [--shape nodes|strings]

`numbers` is a few thousand nodes, each with a long list of small numbers (the shape
that costs most to parse: every number is a JSON value); `nodes` is a graph of many
small nodes (beyond the node limit: refused after parsing); `strings` is a few
hundred nodes carrying long text inputs. Linux only (reads /proc).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def wait_healthy(base, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(f"{base}/api/v2/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("dev did not become healthy")


def workflow(size_mb, shape):
    target = int(size_mb * 1024 * 1024)
    nodes = {}
    if shape == "strings":
        text = "a photograph of a lighthouse at dusk, " * 200  # ~7.6 KB
        i = 0
        size = 0
        while size < target:
            i += 1
            nodes[str(i)] = {
                "class_type": "CLIPTextEncode",
                "inputs": {"text": text, "clip": ["0", 1]},
            }
            size += len(text) + 60
        nodes["0"] = {
            "class_type": "CheckpointLoaderSimple",
            "inputs": {"ckpt_name": "sd15.safetensors"},
        }
    elif shape == "numbers":
        # Few nodes (within the node limit), each with a long list of small numbers:
        # the shape that costs most to parse (every number is a JSON value).
        per_node = 2000
        count = max(1, target // (per_node * 2 + 80))
        for i in range(1, count + 1):
            nodes[str(i)] = {
                "class_type": "PrimitiveNode",
                "inputs": {"value": [0] * per_node},
            }
    else:
        # A chain of small image nodes: about 110 bytes each.
        nodes["1"] = {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
        }
        i = 1
        size = 0
        while size < target:
            i += 1
            nodes[str(i)] = {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}}
            size += 70 + 2 * len(str(i))
        nodes[str(i + 1)] = {
            "class_type": "SaveImage",
            "inputs": {"images": [str(i), 0], "filename_prefix": "bench"},
        }
    return json.dumps({"workflow": nodes}, separators=(",", ":")).encode()


def post(base, body, results):
    request = urllib.request.Request(
        f"{base}/api/v2/jobs",
        data=body,
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as r:
            results.append(r.status)
    except urllib.error.HTTPError as e:
        results.append(e.code)
    except Exception as e:  # noqa: BLE001 - a benchmark reports, it does not stop
        results.append(str(e))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default="target/release/serverless-comfyui")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--size-mb", type=float, default=10)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--shape", choices=["nodes", "numbers", "strings"], default="numbers")
    parser.add_argument("--port", type=int, default=18787)
    parser.add_argument(
        "--old", action="store_true", help="the binary predates --max-connections"
    )
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="sc-bench-memory-")
    base = f"http://127.0.0.1:{args.port}"
    dev = subprocess.Popen(
        [
            args.bin,
            "dev",
            "--no-runner",
            "--listen",
            f"127.0.0.1:{args.port}",
            "--data-dir",
            data,
        ]
        + (
            []
            if args.old
            else [
                "--max-connections",
                str(args.connections + 100),
                "--header-timeout-seconds",
                "120",
            ]
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        wait_healthy(base)
        pid = dev.pid

        # Idle connections.
        rss0 = status_kib(pid, "VmRSS")
        socks = []
        for _ in range(args.connections):
            s = socket.create_connection(("127.0.0.1", args.port))
            socks.append(s)
        time.sleep(2)
        wait_healthy(base, 10)
        rss1 = status_kib(pid, "VmRSS")
        per = (rss1 - rss0) / max(1, args.connections)
        print(
            f"idle connections: {args.connections}, RSS {rss0} -> {rss1} KiB, "
            f"{per:.1f} KiB per connection"
        )
        for s in socks:
            s.close()
        time.sleep(1)

        # Large submits.
        body = workflow(args.size_mb, args.shape)
        print(f"workflow: {len(body) / 1e6:.1f} MB, shape {args.shape}")
        hwm0 = status_kib(pid, "VmHWM")
        results = []
        post(base, body, results)
        hwm1 = status_kib(pid, "VmHWM")
        print(
            f"one submit: status {results[0]}, peak RSS {hwm0} -> {hwm1} KiB "
            f"(+{(hwm1 - hwm0) / 1024:.0f} MiB)"
        )
        results = []
        threads = [
            threading.Thread(target=post, args=(base, body, results))
            for _ in range(args.concurrent)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        hwm2 = status_kib(pid, "VmHWM")
        print(
            f"{args.concurrent} concurrent submits: statuses {sorted(map(str, results))}, "
            f"peak RSS {hwm1} -> {hwm2} KiB (+{(hwm2 - hwm0) / 1024:.0f} MiB over the start)"
        )
    finally:
        dev.terminate()
        try:
            dev.wait(timeout=20)
        except subprocess.TimeoutExpired:
            dev.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
