"""Peak memory (max RSS) of `sonocad predict` and of a `serve` upload, one input at a time.

Usage: python benchmarks/peak_memory.py [--busi ../shared/datasets/busi] [--keep DIR]

Every case runs in a child process of its own, and its peak resident set size is the one the
kernel reports for that child when it ends (os.wait4), so cases never mix. Inputs are made at
run time in a temporary folder (or `--keep DIR`): an all-black 10000 x 10000 PNG (about 100 KB),
an 11000 x 11000 RLE DICOM, images at the pixel limit (`MAX_IMAGE_PIXELS`, 4096 x 4096: RGB,
the costliest kind, a 12-bit DICOM, and a folder of 8 RGB ones, the default batch size, which
predict splits so that a batch holds no more pixels than one image at the limit), and the
first 100 BUSI images (skipped when BUSI is absent). `predict` runs with the bundled default
model and writes every output (mask, overlay, heatmap, table); the worst case runs the default
model with its lesion head set to call every pixel lesion (a whole-image outline costs most to
measure). The serve cases post the file to the app in-process (TestClient), as the viewer
does. Prints one markdown table: no timings, memory only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, UltrasoundImageStorage, generate_uid

from _common import machine_line
from sonocad.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sonocad.data.phantom import make_phantom
from sonocad.inference.predictor import DEFAULT_MODEL
from sonocad.io.pixels import MAX_IMAGE_PIXELS

BUSI_IMAGES = 100
LIMIT_SIDE = 4096  # MAX_IMAGE_PIXELS = 4096 x 4096: at the limit is still legal
BATCH = 8  # `sonocad predict`'s default batch size
PREDICT_CODE = "import sys; from sonocad.cli import main; sys.exit(main(sys.argv[1:]))"
# Only the load of the model and no image: what every case pays before its input.
BASELINE_CODE = "from sonocad.inference.predictor import Predictor; Predictor.default()"
SERVE_CODE = """
import json, sys
from fastapi.testclient import TestClient
from sonocad.inference.predictor import Predictor
from sonocad.serve import create_app
data = open(sys.argv[1], "rb").read()
with TestClient(create_app(Predictor.default())) as client:
    reply = client.post("/api/predict", files={"file": ("upload", data, "application/dicom")})
print(json.dumps({"status": reply.status_code, **reply.json()}))
"""


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]  # writes the input under a folder, returns its path
    serve: bool = False
    lesion_everywhere: bool = False  # the default model, its lesion head made to say "all"


@dataclass(frozen=True)
class Outcome:
    peak_mib: float
    exit_code: int
    result: str


def black_png(folder: Path) -> Path:
    path = folder / "black_10000x10000.png"
    PILImage.new("L", (10_000, 10_000)).save(path, optimize=True)
    return path


def rle_dicom(folder: Path) -> Path:
    """A decodable 11000 x 11000 8-bit RLE DICOM: a bright band on black, about 2 MB."""
    pixels = np.zeros((11_000, 11_000), np.uint8)
    pixels[:, 3_000:7_000] = 200
    ds = _dataset(pixels, bits=8)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    return _save(ds, folder / "rle_11000x11000.dcm")


def _scan(size: int) -> np.ndarray:
    """A phantom with a lesion, scaled up to `size` square: something for the model to find."""
    small = make_phantom("malignant", size=(512, 512), seed=1).image
    return np.asarray(PILImage.fromarray(small).resize((size, size), PILImage.BILINEAR))


def limit_rgb_png(folder: Path) -> Path:
    grey = _scan(LIMIT_SIDE)
    path = folder / f"limit_rgb_{LIMIT_SIDE}x{LIMIT_SIDE}.png"
    PILImage.fromarray(np.dstack([grey, grey, grey // 2])).save(path, compress_level=1)
    return path


def limit_rgb_folder(folder: Path) -> Path:
    """`BATCH` copies of the RGB PNG at the limit: `predict` holds a whole batch at once."""
    image, target = limit_rgb_png(folder), folder / "limit_batch"
    target.mkdir(exist_ok=True)
    for index in range(BATCH):
        shutil.copyfile(image, target / f"{index}.png")
    return target


def limit_rgb_jpeg(folder: Path) -> Path:
    grey = _scan(LIMIT_SIDE)  # a JPEG: a PNG this size is over serve's 20 MiB upload limit
    path = folder / f"limit_rgb_{LIMIT_SIDE}x{LIMIT_SIDE}.jpg"
    PILImage.fromarray(np.dstack([grey, grey, grey // 2])).save(path, quality=90)
    return path


def limit_dicom_12bit(folder: Path) -> Path:
    pixels = _scan(LIMIT_SIDE).astype(np.uint16) * 16  # 12-bit values in a 16-bit container
    return _save(_dataset(pixels, bits=12), folder / f"limit_12bit_{LIMIT_SIDE}.dcm")


def _dataset(pixels: np.ndarray, bits: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.set_pixel_data(pixels, "MONOCHROME2", bits)
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.PixelSpacing = [0.05, 0.05]
    return ds


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def lesion_everywhere_checkpoint(folder: Path) -> Path:
    """The default model with a lesion head that calls every pixel lesion (sigmoid(10))."""
    with as_file(files("sonocad").joinpath(*DEFAULT_MODEL)) as bundled:
        default = load_checkpoint(bundled)
    weights = dict(default.state_dict)
    weights["lesion.weight"] = torch.zeros_like(weights["lesion.weight"])
    weights["lesion.bias"] = torch.full_like(weights["lesion.bias"], 10.0)
    path = folder / "lesion_everywhere.pt"
    save_checkpoint(path, Checkpoint(default.meta, weights))
    return path


def busi_folder(busi: Path) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        images = sorted(p for p in (busi / "Dataset_BUSI_with_GT").rglob("*.png")
                        if "_mask" not in p.stem)[:BUSI_IMAGES]
        target = folder / "busi_100"
        for image in images:
            destination = target / image.relative_to(busi / "Dataset_BUSI_with_GT")
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, destination)
        return target
    return make


def run_child(command: list[str], log: Path) -> tuple[int, float]:
    """(exit code, peak RSS in MiB) of one child process, from the kernel's own count."""
    with open(log, "wb") as output:
        child = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: tell Popen
    return child.returncode, usage.ru_maxrss / 1024  # Linux reports KiB


def run_predict(source: Path, out: Path, checkpoint: Path | None) -> Outcome:
    log = out.with_suffix(".log")
    model = [str(checkpoint)] if checkpoint else []
    code, peak = run_child([sys.executable, "-c", PREDICT_CODE, "predict", *model, str(source),
                            "--out", str(out)], log)
    table = out / "predictions.csv"
    rows = list(csv.DictReader(table.read_text().splitlines())) if table.is_file() else []
    refusals = [line.removeprefix("sonocad: ") for line in log.read_text().splitlines()
                if source.name in line and "sonocad:" in line]
    if rows:
        result = f"predicted {len(rows)} image(s)"
        if len(rows) == 1:
            row = rows[0]
            share = _lesion_share(float(row["lesion_area_px"]), int(row["width"]),
                                  int(row["height"]))
            result += f": {row['width']} x {row['height']}, {row.get('final_class')}, {share}"
    else:
        result = "refused: " + (refusals[-1] if refusals else log.read_text().strip()[-200:])
    return Outcome(peak, code, result.replace(str(source.parent) + "/", ""))


def run_serve(source: Path, log: Path) -> Outcome:
    code, peak = run_child([sys.executable, "-c", SERVE_CODE, str(source)], log)
    lines = log.read_text().strip().splitlines()
    try:
        reply = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return Outcome(peak, code, "failed: " + " ".join(lines[-3:]))
    if reply["status"] != 200:
        return Outcome(peak, code, f"refused, HTTP {reply['status']}: {reply['detail']}")
    share = _lesion_share(reply["lesion_area_px"], reply["width"], reply["height"])
    return Outcome(peak, code, f"HTTP 200: {reply['width']} x {reply['height']}, "
                               f"{reply['final_class']}, {share}")


def _lesion_share(area_px: float, width: int, height: int) -> str:
    return f"lesion {100 * area_px / (width * height):.1f} % of the image"


def cases(busi: Path) -> list[Case]:
    found = [
        Case("predict, 10000 x 10000 black PNG", black_png),
        Case("predict, 11000 x 11000 RLE DICOM", rle_dicom),
        Case(f"predict, {LIMIT_SIDE} x {LIMIT_SIDE} RGB PNG (at the limit)", limit_rgb_png),
        Case(f"predict, {LIMIT_SIDE} x {LIMIT_SIDE} 12-bit DICOM (at the limit)",
             limit_dicom_12bit),
        Case(f"predict, {LIMIT_SIDE} x {LIMIT_SIDE} RGB PNG, lesion everywhere (worst case)",
             limit_rgb_png, lesion_everywhere=True),
        Case(f"predict, folder of {BATCH} RGB PNGs at the limit (batch size 8)", limit_rgb_folder),
        Case("serve upload, 11000 x 11000 RLE DICOM", rle_dicom, serve=True),
        Case(f"serve upload, {LIMIT_SIDE} x {LIMIT_SIDE} RGB JPEG (at the limit)",
             limit_rgb_jpeg, serve=True),
    ]
    if (busi / "Dataset_BUSI_with_GT").is_dir():
        found.insert(2, Case(f"predict, folder of the first {BUSI_IMAGES} BUSI images",
                             busi_folder(busi)))
    else:
        print(f"BUSI not found under {busi}: the {BUSI_IMAGES}-image folder is skipped",
              file=sys.stderr)
    return found


def measure(case: Case, folder: Path, index: int) -> tuple[Path, Outcome]:
    source = case.make(folder)
    out = folder / f"out_{index}"
    if case.serve:
        return source, run_serve(source, out.with_suffix(".log"))
    checkpoint = lesion_everywhere_checkpoint(folder) if case.lesion_everywhere else None
    return source, run_predict(source, out, checkpoint)


def size_of(path: Path) -> str:
    total = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
             else path.stat().st_size)
    return f"{total / 2**20:.1f} MiB" if total >= 2**20 else f"{total / 2**10:.0f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", type=Path, default=Path("../shared/datasets/busi"))
    parser.add_argument("--keep", type=Path, help="write inputs and outputs here, and keep them")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="sonocad-peak-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        print(machine_line())
        print(f"pixel limit: MAX_IMAGE_PIXELS = {MAX_IMAGE_PIXELS:,} "
              f"({LIMIT_SIDE} x {LIMIT_SIDE}) per image or frame\n")
        print("| case | input on disk | peak RSS | exit | result |")
        print("| --- | --- | --- | --- | --- |")
        code, peak = run_child([sys.executable, "-c", BASELINE_CODE], folder / "baseline.log")
        print(f"| baseline: load the default model, no image | — | {peak:,.0f} MiB | {code} "
              "| — |", flush=True)
        for index, case in enumerate(cases(args.busi)):
            source, outcome = measure(case, folder, index)
            print(f"| {case.name} | {size_of(source)} | {outcome.peak_mib:,.0f} MiB | "
                  f"{outcome.exit_code} | {outcome.result} |", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
