"""`sonocad predict` and `serve` end to end against the model alone: images/s, start-up and
peak memory.

Usage: python benchmarks/predict_throughput.py [--busi DIR] [--images 100] [--repeats 3]

The bundled default model as it ships (its ONNX twin, `sonocad/weights/default.onnx`), side by
side in one run on the same `--images` BUSI images (every k-th image of the data set):
* model only: ONNX Runtime on the images already resized and normalised, batch 8, 2 threads;
* predict per image: `Predictor.predict` (decode not included: pre-processing, model,
  post-processing to full-size masks and probabilities);
* `sonocad predict IMAGES --out DIR` as a user runs it (its own process, no model argument: the
  bundled model, on ONNX Runtime without torch), with every output set in turn. Its start-up is
  the wall time of the same command on one image with only the table written; throughput after
  start-up is (N - 1) / (wall(N) - wall(1)). The same one-image command with ``--backend
  torch`` (the checkpoint on torch, as before the torch-free path) is the reference;
* `sonocad serve --port 0`: seconds until it listens, and its resident memory then and after one
  image is analysed (the kernel's high-water mark, VmHWM), on both back ends.
Each command runs `--repeats` times, medians shown; peak RSS is GNU time's count for the command
(`/usr/bin/time -f %M`: a child forked straight from this process would inherit its high-water
mark, torch and the images included). The machine is shared and noisy: compare rows of one run,
as ratios.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine_line
from sonocad.inference.predictor import BUNDLED_ONNX, Predictor
from sonocad.io.images import read_image
from sonocad.model_input import model_input

ROOT = Path(__file__).resolve().parents[1]
ONNX = ROOT / "src" / "sonocad" / Path(*BUNDLED_ONNX)
BUSI = ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
OUTPUT_SETS = [("mask,overlay,heatmap,table", "png"), ("mask,overlay,heatmap,table", "jpeg"),
               ("mask,table", "png"), ("table", "png")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", type=Path, default=BUSI)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not args.busi.is_dir():
        sys.exit(f"{args.busi}: BUSI not found; give --busi")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        images = _sample_images(args.busi, args.images, work / "images")
        print(machine_line())
        print(f"{len(images)} BUSI images, ONNX Runtime, 2 threads; medians of "
              f"{args.repeats} runs\n")
        print("| what | images/s | ms/image | start-up s | peak RSS MiB |")
        print("| --- | --- | --- | --- | --- |")
        model_rate = _model_only(ONNX, images, args.repeats)
        print(f"| model only (ONNX Runtime, batch 8) | {model_rate:.1f} | {1000 / model_rate:.1f}"
              " | — | — |")
        rate = _predictor(ONNX, images, args.repeats)
        print(f"| Predictor.predict (pre + model + post) | {rate:.1f} | {1000 / rate:.1f} | — |"
              " — |")
        torch_startup, torch_rss = _command(images[:1], "table", "png", work, args.repeats,
                                            backend="torch")
        print(f"| `sonocad predict --backend torch`, 1 image, table only (before) | — | — | "
              f"{torch_startup:.2f} | {torch_rss:.0f} |")
        startup, startup_rss = _command(images[:1], "table", "png", work, args.repeats)
        print(f"| `sonocad predict`, 1 image, table only (start-up) | — | — | {startup:.2f} | "
              f"{startup_rss:.0f} |")
        for outputs, pictures in OUTPUT_SETS:
            wall, rss = _command(images, outputs, pictures, work, args.repeats)
            after = (len(images) - 1) / max(wall - startup, 1e-9)
            print(f"| `sonocad predict --outputs {outputs} --pictures {pictures}` | "
                  f"{after:.1f} ({after / model_rate:.2f} of the model's) | {1000 / after:.1f}"
                  f" | {startup:.2f} | {rss:.0f} |")
        for backend in ("torch", "onnx"):
            ready, idle, busy = _serve(images[0], backend, args.repeats)
            print(f"| `sonocad serve --backend {backend}`: ready / after one image | — | — | "
                  f"{ready:.2f} | {idle:.0f} / {busy:.0f} |")


def _sample_images(busi: Path, n: int, folder: Path) -> list[Path]:
    scans = sorted(p for p in busi.rglob("*.png") if "_mask" not in p.name)
    step = max(1, len(scans) // n)
    folder.mkdir(parents=True)
    chosen = []
    for path in scans[::step][:n]:
        target = folder / path.name.replace(" ", "_")
        shutil.copyfile(path, target)
        chosen.append(target)
    return chosen


def _model_only(onnx: Path, images: list[Path], repeats: int) -> float:
    predictor = Predictor(onnx, backend="onnx")
    spec = predictor.transform_config
    inputs = [model_input(read_image(p).pixels, spec) for p in images]
    session = predictor.runner.session  # type: ignore[attr-defined]
    name = session.get_inputs()[0].name
    batches = [np.stack(inputs[i:i + 8]) for i in range(0, len(inputs), 8)]

    def run() -> None:
        for batch in batches:
            session.run(None, {name: batch})
    return len(images) / _median_seconds(run, repeats)


def _predictor(onnx: Path, images: list[Path], repeats: int) -> float:
    predictor = Predictor(onnx, backend="onnx")
    pixels = [read_image(p).pixels for p in images]

    def run() -> None:
        for start in range(0, len(pixels), 8):
            predictor.predict(pixels[start:start + 8])
    return len(images) / _median_seconds(run, repeats)


def _median_seconds(job, repeats: int) -> float:
    job()  # warm-up: ONNX Runtime plans its kernels on the first call
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        job()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _command(images: list[Path], outputs: str, pictures: str, work: Path, repeats: int,
             backend: str | None = None) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MiB) of `sonocad predict` with the bundled model in
    its own process (`backend` None: as a user runs it)."""
    walls, peaks = [], []
    for run in range(repeats):
        out = work / f"out-{outputs.replace(',', '-')}-{pictures}-{len(images)}-{backend}-{run}"
        command = [sys.executable, "-m", "sonocad.cli", "predict", *map(str, images),
                   "--out", str(out), "--outputs", outputs, "--pictures", pictures,
                   *(["--backend", backend] if backend else [])]
        report = work / "time.txt"
        started = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(report), *command],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        walls.append(time.perf_counter() - started)
        if done.returncode != 0:
            sys.exit(f"predict failed: {done.stderr.decode()[-2000:]}")
        peaks.append(int(report.read_text().split()[-1]) / 1024)
        shutil.rmtree(out)
    return statistics.median(walls), statistics.median(peaks)


def _serve(image: Path, backend: str, repeats: int) -> tuple[float, float, float]:
    """Median (seconds until `sonocad serve` listens, its RSS high-water mark in MiB then,
    and after analysing `image`)."""
    readies, idles, busies = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "sonocad.cli", "serve", "--port", "0",
                                  "--backend", backend], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        try:
            port = int(re.search(r":(\d+)/", child.stdout.readline())[1])
            _wait_until_answering(port)
            readies.append(time.perf_counter() - started)
            idles.append(_high_water_mib(child.pid))
            _upload(port, image)
            busies.append(_high_water_mib(child.pid))
        finally:
            child.terminate()
            child.wait()
    return statistics.median(readies), statistics.median(idles), statistics.median(busies)


def _wait_until_answering(port: int) -> None:
    """Until GET /api/health answers (the line is printed just before uvicorn listens)."""
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/api/health")
            connection.getresponse().read()
            return
        except ConnectionRefusedError:
            time.sleep(0.01)


def _high_water_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024


def _upload(port: int, image: Path) -> None:
    boundary = "sonocad-benchmark"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{image.name}\"\r\nContent-Type: image/png\r\n\r\n").encode()
    body += image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("POST", "/api/predict", body, {
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"serve answered {response.status}")


if __name__ == "__main__":
    main()
