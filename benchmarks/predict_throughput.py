"""`sonocad predict` end to end against the model alone: images/s, start-up and peak memory.

Usage: python benchmarks/predict_throughput.py [--busi DIR] [--images 100] [--repeats 3]

The bundled default model is exported once to ONNX (outside every timing); then, side by side
in one run on the same `--images` BUSI images (every k-th image of the data set, all classes):
* model only: ONNX Runtime on the images already resized and normalised, batch 8, 2 threads;
* predict per image: `Predictor.predict` (decode not included: pre-processing, model,
  post-processing to full-size masks and probabilities);
* `sonocad predict` as a user runs it (its own process, ONNX back end), with every output set
  in turn. Its start-up is the wall time of the same command on one image with only the
  table written; throughput after start-up is (N - 1) / (wall(N) - wall(1)).
Each command runs `--repeats` times, medians shown; peak RSS is the kernel's count for the
child (os.wait4). The machine is shared and noisy: compare rows of one run, as ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine_line
from sonocad.inference.export import export_onnx
from sonocad.inference.predictor import Predictor
from sonocad.io.images import read_image
from sonocad.transforms import to_model_input

ROOT = Path(__file__).resolve().parents[1]
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
        onnx = export_onnx(ROOT / "src" / "sonocad" / "weights" / "default.pt",
                           work / "default.onnx")
        print(machine_line())
        print(f"{len(images)} BUSI images, ONNX Runtime, 2 threads; medians of "
              f"{args.repeats} runs\n")
        print("| what | images/s | ms/image | start-up s | peak RSS MiB |")
        print("| --- | --- | --- | --- | --- |")
        model_rate = _model_only(onnx, images, args.repeats)
        print(f"| model only (ONNX Runtime, batch 8) | {model_rate:.1f} | {1000 / model_rate:.1f}"
              " | — | — |")
        rate = _predictor(onnx, images, args.repeats)
        print(f"| Predictor.predict (pre + model + post) | {rate:.1f} | {1000 / rate:.1f} | — |"
              " — |")
        startup, startup_rss = _command(onnx, images[:1], "table", "png", work, args.repeats)
        print(f"| `sonocad predict`, 1 image, table only (start-up) | — | — | {startup:.2f} | "
              f"{startup_rss:.0f} |")
        for outputs, pictures in OUTPUT_SETS:
            wall, rss = _command(onnx, images, outputs, pictures, work, args.repeats)
            after = (len(images) - 1) / max(wall - startup, 1e-9)
            print(f"| `sonocad predict --outputs {outputs} --pictures {pictures}` | "
                  f"{after:.1f} ({after / model_rate:.2f} of the model's) | {1000 / after:.1f}"
                  f" | {startup:.2f} | {rss:.0f} |")


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
    config = predictor.transform_config
    inputs = [to_model_input(read_image(p).pixels, config).numpy() for p in images]
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


def _command(onnx: Path, images: list[Path], outputs: str, pictures: str, work: Path,
             repeats: int) -> tuple[float, float]:
    """Median wall seconds and peak RSS (MiB) of `sonocad predict` in its own process."""
    walls, peaks = [], []
    for run in range(repeats):
        out = work / f"out-{outputs.replace(',', '-')}-{pictures}-{len(images)}-{run}"
        command = [sys.executable, "-m", "sonocad.cli", "predict", str(onnx),
                   *map(str, images), "--out", str(out), "--backend", "onnx",
                   "--outputs", outputs, "--pictures", pictures]
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(child.pid, 0)
        walls.append(time.perf_counter() - started)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"predict failed: {child.stderr.read().decode()[-2000:]}")
        peaks.append(usage.ru_maxrss / 1024)
        shutil.rmtree(out)
    return statistics.median(walls), statistics.median(peaks)


if __name__ == "__main__":
    main()
