#!/usr/bin/env python3
"""Filtered listings under load (issue 17, M4).

Starts `serverless-comfyui dev --no-runner` on a fresh data dir, submits JOBS jobs in
one tenant (half labelled a=1,b=0, half a=0,b=1), then runs SCANNERS threads that list
`metadata[a]=1&metadata[b]=1` (each filter matches half the jobs, together none) for
SECONDS, while one more thread times `GET /api/v2/openapi.json` and `/api/v2/health`.
Prints the latency of those unrelated requests and of the filtered pages.

Usage:
    python3 bench/list_scan.py [--bin target/release/serverless-comfyui]
                               [--jobs 60000] [--scanners 16] [--seconds 10]
"""

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request

WORKFLOW = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {
        "class_type": "SaveImage",
        "inputs": {"images": ["1", 0], "filename_prefix": "bench"},
    },
}


def request(url, body=None, timeout=120):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json"}
    )
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=timeout) as r:
        payload = r.read()
        status = r.status
    return status, payload, time.perf_counter() - started


def wait_healthy(base, deadline=60):
    end = time.time() + deadline
    while time.time() < end:
        try:
            if request(f"{base}/api/v2/health", timeout=2)[0] == 200:
                return
        except Exception:
            time.sleep(0.2)
    raise RuntimeError("dev did not become healthy")


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default="target/release/serverless-comfyui")
    parser.add_argument("--jobs", type=int, default=60000)
    parser.add_argument("--scanners", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--port", type=int, default=18797)
    args = parser.parse_args()

    data = tempfile.mkdtemp(prefix="sc-bench-list-")
    base = f"http://127.0.0.1:{args.port}"
    dev = subprocess.Popen(
        [args.bin, "dev", "--no-runner", "--listen", f"127.0.0.1:{args.port}",
         "--data-dir", data],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn"},
    )
    try:
        wait_healthy(base)
        started = time.time()

        def submit(i):
            labels = {"a": "1", "b": "0"} if i % 2 == 0 else {"a": "0", "b": "1"}
            return request(f"{base}/api/v2/jobs", {"workflow": WORKFLOW, "metadata": labels})[0]

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(submit, range(args.jobs)))
        assert all(s == 201 for s in statuses), set(statuses)
        print(f"submitted {args.jobs} jobs in {time.time() - started:.0f} s")

        stop = threading.Event()
        pages = []

        def scan():
            while not stop.is_set():
                url = f"{base}/api/v2/jobs?metadata%5Ba%5D=1&metadata%5Bb%5D=1&limit=20"
                try:
                    status, payload, took = request(url)
                    pages.append((status, took, len(json.loads(payload).get("jobs", []))))
                except Exception as e:  # noqa: BLE001
                    pages.append((str(e), 0, 0))

        unrelated = []

        def probe():
            while not stop.is_set():
                for path in ("/api/v2/openapi.json", "/api/v2/health"):
                    unrelated.append(request(base + path)[2])
                time.sleep(0.05)

        threads = [threading.Thread(target=scan) for _ in range(args.scanners)]
        threads.append(threading.Thread(target=probe))
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join()
        took = [p[1] for p in pages if p[0] == 200]
        print(
            f"{args.scanners} filtered scanners: {len(took)} pages "
            f"(statuses {sorted(set(str(p[0]) for p in pages))}), "
            f"p50 {percentile(took, 0.5) * 1000:.0f} ms, p99 {percentile(took, 0.99) * 1000:.0f} ms"
        )
        print(
            f"unrelated requests (openapi.json, health): {len(unrelated)}, "
            f"p50 {percentile(unrelated, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(unrelated, 0.99) * 1000:.0f} ms, "
            f"max {max(unrelated) * 1000:.0f} ms"
        )
    finally:
        dev.terminate()
        try:
            dev.wait(timeout=20)
        except subprocess.TimeoutExpired:
            dev.kill()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
