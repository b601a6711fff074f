"""Load on `sonocad serve`: latency, throughput and server memory under concurrent uploads.

Usage: python benchmarks/serve_load.py [CKPT] [--backend torch|onnx] [--requests 200]
           [--concurrency 8] [--time-limit 300] [--size 256]

Starts the server in its own process on 127.0.0.1 (a free port; nothing else is ever
contacted) with CKPT, or the bundled default model when CKPT is omitted; waits for it, sends
a few warm-up uploads, then `--requests` uploads of synthetic phantom PNGs (`--size` pixels
square) from `--concurrency` threads, stopping early at `--time-limit` seconds. Each request is
one POST /api/predict (decode, model, measurements, overlay and heatmap PNGs). Prints one
markdown table; the server's RSS comes from psutil where installed, else /proc.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image as PILImage

from _common import machine_line
from sonocad.data.phantom import CLASS_NAMES, make_phantom

HOST = "127.0.0.1"  # loopback only: this script loads no server but its own
WARMUP = 3
STARTUP_SECONDS = 180
# The server process: `run` prints its address (port 0 = a free port) before it serves.
SERVER_CODE = """
import sys
from sonocad.errors import SonocadError
from sonocad.serve import run
try:
    run(sys.argv[1] or None, host=sys.argv[2], port=0, backend=sys.argv[3])
except SonocadError as exc:
    sys.exit(f"sonocad: error: {exc}")
except KeyboardInterrupt:  # how this script stops it, after uvicorn's graceful shutdown
    pass
"""


def start_server(checkpoint: Path | None, backend: str) -> tuple[subprocess.Popen, str]:
    """The server process and its base URL, once it answers /api/health."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_CODE, str(checkpoint or ""), HOST, backend],
        stdout=subprocess.PIPE, text=True)
    address: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_watch, args=(server.stdout, address, ready), daemon=True).start()
    ready.wait(STARTUP_SECONDS)
    if not address:
        stop_server(server)
        sys.exit("serve_load: the server did not start (its error is above)")
    url = address[0]
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}api/health", timeout=5).status_code == 200:
                return server, url
        except httpx.TransportError:
            time.sleep(0.2)
    stop_server(server)
    sys.exit("serve_load: the server never answered /api/health")


def _watch(stdout: io.TextIOBase, address: list[str], ready: threading.Event) -> None:
    """Note the address the server prints, then keep reading: a full pipe would block it."""
    for line in stdout:
        found = None if address else re.search(r"at (http://\S+/)", line)
        if found:
            address.append(found.group(1))
            ready.set()
    ready.set()  # the process ended


def stop_server(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def rss_mib(pid: int) -> float:
    try:
        import psutil
    except ImportError:
        return _proc_status_mib(pid, "VmRSS")
    return psutil.Process(pid).memory_info().rss / 2**20


def peak_rss_mib(pid: int) -> float:
    """The process's high-water mark (Linux /proc only; NaN elsewhere)."""
    try:
        return _proc_status_mib(pid, "VmHWM")
    except OSError:
        return float("nan")


def _proc_status_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith(f"{field}:"))
    return int(line.split()[1]) / 1024  # kB


def phantom_pngs(size: int, count: int = 8) -> list[bytes]:
    images = []
    for seed in range(count):
        buffer = io.BytesIO()
        phantom = make_phantom(CLASS_NAMES[seed % len(CLASS_NAMES)], size=(size, size),
                               seed=seed)
        PILImage.fromarray(phantom.image).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def load(url: str, images: list[bytes], requests: int, concurrency: int,
         time_limit: float) -> tuple[list[float], int, float]:
    """(latencies of the answered requests in s, errors, wall seconds)."""
    deadline = time.monotonic() + time_limit
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        if time.monotonic() > deadline:
            return  # over time: the rest are not sent
        start = time.perf_counter()
        try:
            response = client.post(f"{url}api/predict",
                                   files={"file": (f"{i}.png", images[i % len(images)])})
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        elapsed = time.perf_counter() - start
        with lock:
            latencies.append(elapsed)
            errors += not ok

    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(timeout=max(60.0, time_limit), limits=limits) as client:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    return latencies, errors, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, nargs="?",
                        help="checkpoint or .onnx file (default: the bundled model)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds")
    parser.add_argument("--size", type=int, default=256, help="phantom side in pixels")
    args = parser.parse_args()

    images = phantom_pngs(args.size)
    server, url = start_server(args.checkpoint, args.backend)
    try:
        model = httpx.get(f"{url}api/model", timeout=10).json()
        # RSS "before" after warm-up: the first requests allocate the model's working memory.
        for i in range(WARMUP):
            httpx.post(f"{url}api/predict", files={"file": ("w.png", images[i])}, timeout=60)
        before = rss_mib(server.pid)
        latencies, errors, wall = load(url, images, args.requests, args.concurrency,
                                       args.time_limit)
        after, peak = rss_mib(server.pid), peak_rss_mib(server.pid)
    finally:
        stop_server(server)

    p50, p95 = (np.percentile(latencies, [50, 95]) * 1000) if latencies else (np.nan, np.nan)
    print(f"`sonocad serve` under load — {machine_line()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print(f"Model {model['name']} ({model['task']}, input {model['input_size']}, "
          f"{model['backend']}); {args.size} x {args.size} phantom PNGs; "
          f"{args.concurrency} concurrent clients; limit {args.time_limit:g} s.\n")
    print("| requests | errors | p50 latency (ms) | p95 latency (ms) | requests/s "
          "| server RSS before (MiB) | server RSS after (MiB) | server peak RSS (MiB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    print(f"| {len(latencies)} | {errors} | {p50:.0f} | {p95:.0f} | "
          f"{len(latencies) / wall if wall else 0:.1f} | {before:.0f} | {after:.0f} "
          f"| {peak:.0f} |")
    if len(latencies) < args.requests:
        print(f"\nStopped at the time limit: {args.requests - len(latencies)} requests not sent.")


if __name__ == "__main__":
    main()
