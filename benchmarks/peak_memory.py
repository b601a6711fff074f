"""Peak memory (max RSS) of `sonocad predict` and of a `serve` upload, one input at a time.

Usage: python benchmarks/peak_memory.py [--busi ../shared/datasets/busi] [--keep DIR]
       [--only TEXT ...]  (only the cases whose name holds one of the TEXTs; the baseline always)

Every case runs in a child process of its own, and its peak resident set size is the one the
kernel reports for that child when it ends (os.wait4), so cases never mix. Inputs are made at
run time in a temporary folder (or `--keep DIR`): an all-black 10000 x 10000 PNG (about 100 KB),
an 11000 x 11000 RLE DICOM, images at the pixel limit (`MAX_IMAGE_PIXELS`, 4096 x 4096: RGB,
the costliest kind, a 12-bit DICOM, and a folder of 8 RGB ones, the default batch size, which
predict splits so that a batch holds no more pixels than one image at the limit), and the
first 100 BUSI images (skipped when BUSI is absent). Then the decode budgets (issue 28):
DICOM bombs whose header says 256 x 256 (a JPEG-LS codestream of 40000 x 40000, a baseline
JPEG one of 13000 x 13000, a Deflated data set inflating to 1.5 GB), a TIFF of 100,000 pages,
and a checkpoint whose meta asks for 3072 px input, on a 512 x 512 image. `predict` runs with
the bundled default model and writes every output (mask, overlay, heatmap, table); the worst
case runs the default model with its lesion head set to call every pixel lesion (a
whole-image outline costs most to measure). The serve cases post the file to the app
in-process (TestClient), as the viewer does. Prints one markdown table, no timings, memory
only, then the cases over their stated limit (`Case.limit_mib`: the 1.6 GiB an image at the
pixel limit takes, for the bombs).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

from _common import machine_line
from sonocad.checkpoint import BUNDLED_MODEL, Checkpoint, load_checkpoint, save_checkpoint
from sonocad.data.phantom import make_phantom
from sonocad.io.pixels import MAX_IMAGE_PIXELS

BUSI_IMAGES = 100
LIMIT_SIDE = 4096  # MAX_IMAGE_PIXELS = 4096 x 4096: at the limit is still legal
BATCH = 8  # `sonocad predict`'s default batch size
BOMB_HEADER_SIDE = 256  # what the DICOM bombs' headers say
TIFF_PAGES = 100_000
# An image at the pixel limit peaks at 1.6 GiB (the table's own rows): a bomb, refused, must
# stay within it.
BOMB_LIMIT_MIB = 1_638
PREDICT_CODE = "import sys; from sonocad.cli import main; sys.exit(main(sys.argv[1:]))"
# Only the load of the model and no image: what every case pays before its input.
BASELINE_CODE = "from sonocad.inference.predictor import Predictor; Predictor.default()"
SERVE_CODE = """
import json, sys
from fastapi.testclient import TestClient
from sonocad.inference.predictor import Predictor
from sonocad.serve import create_app
data = open(sys.argv[1], "rb").read()
with TestClient(create_app(Predictor.default()), base_url="http://localhost") as client:
    reply = client.post("/api/predict", files={"file": ("upload", data, "application/dicom")})
print(json.dumps({"status": reply.status_code, **reply.json()}))
"""


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[Path], Path]  # writes the input under a folder, returns its path
    serve: bool = False
    lesion_everywhere: bool = False  # the default model, its lesion head made to say "all"
    # the default model, its meta's input size made this (pixels a side)
    input_size: int | None = None
    limit_mib: float | None = None  # the peak RSS the case must stay within


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


def _bomb_dicom(syntax: str, codestream: bytes, path: Path) -> Path:
    """A 256 x 256 8-bit grey DICOM header around one compressed frame."""
    ds = _bomb_header(syntax)
    ds.PixelData = encapsulate([codestream])
    ds["PixelData"].VR = "OB"
    return _save(ds, path)


def _bomb_header(syntax: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = BOMB_HEADER_SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def jpeg_ls_bomb(folder: Path) -> Path:
    """11.5 KB: a JPEG-LS frame header (SOF55) saying 40000 x 40000, in a 256 x 256 header.
    Only the frame header matters: decoding must be refused before it starts."""
    sof = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, 40_000, 40_000, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x00\x00"
    codestream = b"\xff\xd8" + sof + sos + bytes(11_500) + b"\xff\xd9"
    return _bomb_dicom(JPEGLSLossless, codestream, folder / "jpeg_ls_bomb.dcm")


def jpeg_bomb(folder: Path) -> Path:
    """A real 64 x 64 baseline JPEG whose frame header (SOF0) says 13000 x 13000."""
    buffer = io.BytesIO()
    PILImage.fromarray(_scan(64)).save(buffer, "JPEG")
    stream = buffer.getvalue()
    at = stream.index(b"\xff\xc0") + 5  # the marker, its length, the precision
    codestream = stream[:at] + struct.pack(">HH", 13_000, 13_000) + stream[at + 4:]
    return _bomb_dicom(JPEGBaseline8Bit, codestream, folder / "jpeg_bomb.dcm")


def deflate_bomb(folder: Path) -> Path:
    """About 1.5 MB: a Deflated data set whose pixel data inflates to 1.5 GB of zeros
    (compressed a MiB at a time, never held)."""
    inflated, zeros = 1_500 * 2**20, bytes(2**20)
    ds = _bomb_header(DeflatedExplicitVRLittleEndian)
    meta, body = DicomBytesIO(), DicomBytesIO()
    for stream in (meta, body):
        stream.is_little_endian, stream.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    del ds.file_meta
    write_dataset(body, ds)
    body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated))
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw deflate (PS3.5 A.5)
    path = folder / "deflate_bomb.dcm"
    with open(path, "wb") as out:
        out.write(bytes(128) + b"DICM" + meta.getvalue() + compressor.compress(body.getvalue()))
        for _ in range(inflated // len(zeros)):
            out.write(compressor.compress(zeros))
        out.write(compressor.flush())
    return path


def many_page_tiff(folder: Path) -> Path:
    """About 10 MB: 100,000 grey 16 x 16 pages, every page's header (IFD) pointing at one strip."""
    side, ifd_size, pixels_at = 16, 2 + 8 * 12 + 4, 8
    first = pixels_at + side * side
    path = folder / f"pages_{TIFF_PAGES}.tif"
    with open(path, "wb") as out:
        out.write(struct.pack("<2sHI", b"II", 42, first) + bytes(range(side * side)))
        for page in range(TIFF_PAGES):
            following = first + (page + 1) * ifd_size if page + 1 < TIFF_PAGES else 0
            entries = [(256, 3, 1, side), (257, 3, 1, side), (258, 3, 1, 8), (259, 3, 1, 1),
                       (262, 3, 1, 1), (273, 4, 1, pixels_at), (278, 3, 1, side),
                       (279, 4, 1, side * side)]
            out.write(struct.pack("<H", len(entries))
                      + b"".join(struct.pack("<HHII", *entry) for entry in entries)
                      + struct.pack("<I", following))
    return path


def small_png(folder: Path) -> Path:
    path = folder / "scan_512x512.png"
    PILImage.fromarray(_scan(512)).save(path)
    return path


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
    default = _default_checkpoint()
    weights = dict(default.state_dict)
    weights["lesion.weight"] = torch.zeros_like(weights["lesion.weight"])
    weights["lesion.bias"] = torch.full_like(weights["lesion.bias"], 10.0)
    path = folder / "lesion_everywhere.pt"
    save_checkpoint(path, Checkpoint(default.meta, weights))
    return path


def input_size_checkpoint(folder: Path, side: int) -> Path:
    """The default model, its meta asking for `side` x `side` input (an untrusted file)."""
    default = _default_checkpoint()
    meta = {**default.meta, "transform": {**default.meta["transform"], "input_size": side}}
    path = folder / f"input_size_{side}.pt"
    save_checkpoint(path, Checkpoint(meta, default.state_dict))
    return path


def _default_checkpoint() -> Checkpoint:
    with as_file(files("sonocad").joinpath(*BUNDLED_MODEL)) as bundled:
        return load_checkpoint(bundled)


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
    fatal = [line.removeprefix("sonocad: ") for line in log.read_text().splitlines()
             if line.startswith("sonocad: error:")]
    if rows:
        result = f"predicted {len(rows)} image(s)"
        if len(rows) == 1:
            row = rows[0]
            share = _lesion_share(float(row["lesion_area_px"]), int(row["width"]),
                                  int(row["height"]))
            result += f": {row['width']} x {row['height']}, {row.get('final_class')}, {share}"
    else:
        said = refusals or fatal
        result = "refused: " + (said[-1] if said else log.read_text().strip()[-200:])
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
        Case("predict, DICOM bomb: JPEG-LS codestream of 40000 x 40000 in a 256 x 256 header",
             jpeg_ls_bomb, limit_mib=BOMB_LIMIT_MIB),
        Case("predict, DICOM bomb: baseline JPEG codestream of 13000 x 13000 in a 256 x 256 "
             "header", jpeg_bomb, limit_mib=BOMB_LIMIT_MIB),
        Case("predict, DICOM bomb: Deflated data set inflating to 1.5 GB", deflate_bomb,
             limit_mib=BOMB_LIMIT_MIB),
        Case(f"predict, TIFF of {TIFF_PAGES:,} pages", many_page_tiff, limit_mib=BOMB_LIMIT_MIB),
        Case(f"serve upload, TIFF of {TIFF_PAGES:,} pages", many_page_tiff, serve=True,
             limit_mib=BOMB_LIMIT_MIB),
        Case("predict, checkpoint meta asking for 3072 px input, a 512 x 512 image", small_png,
             input_size=3072, limit_mib=BOMB_LIMIT_MIB),
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
    checkpoint = (lesion_everywhere_checkpoint(folder) if case.lesion_everywhere
                  else input_size_checkpoint(folder, case.input_size) if case.input_size
                  else None)
    return source, run_predict(source, out, checkpoint)


def size_of(path: Path) -> str:
    total = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
             else path.stat().st_size)
    return f"{total / 2**20:.1f} MiB" if total >= 2**20 else f"{total / 2**10:.0f} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", type=Path, default=Path("../shared/datasets/busi"))
    parser.add_argument("--keep", type=Path, help="write inputs and outputs here, and keep them")
    parser.add_argument("--only", action="append", metavar="TEXT",
                        help="run only the cases whose name holds TEXT (may be repeated)")
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
        over = []
        for index, case in enumerate(cases(args.busi)):
            if args.only and not any(text in case.name for text in args.only):
                continue
            source, outcome = measure(case, folder, index)
            print(f"| {case.name} | {size_of(source)} | {outcome.peak_mib:,.0f} MiB | "
                  f"{outcome.exit_code} | {outcome.result} |", flush=True)
            if case.limit_mib is not None and outcome.peak_mib > case.limit_mib:
                over.append(f"{case.name} ({outcome.peak_mib:,.0f} > {case.limit_mib:,} MiB)")
        print(f"\ncases over their limit: {'; '.join(over) if over else 'none'}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
