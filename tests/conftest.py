"""Shared fixtures and helpers. Fixtures: the real data sets (tests that need BUSI skip with a
reason where it is absent), per-test state, and the tiny checkpoints most tests predict with.
Helpers, which test modules import (`from conftest import png`), also where they build their
cases at import time: predictions tables, tiny recipes and checkpoints, phantom data sets and
images, a folder's digest, running `sonocad`, hostile files and this process's memory."""

from __future__ import annotations

import hashlib
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    import uvicorn
    from pydicom import Dataset

    from sonocad.checkpoint import Checkpoint

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUSI_ROOT = PROJECT_ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
BUSBRA_ROOT = PROJECT_ROOT.parent / "shared" / "datasets" / "busbra" / "BUSBRA"

SEG_CLASSES = ["background", "lesion"]
CLS_CLASSES = ["normal", "benign", "malignant"]
UNET_ARGS = {"base_width": 4, "depth": 2}  # the tiny U-Net the tests' checkpoints hold
EXIT_OK, EXIT_SOME_FAILED, EXIT_FATAL = 0, 1, 2  # the exit codes `sonocad` promises


# --- predictions tables, as `sonocad evaluate` writes them ------------------------------------

# 8 patients, 2 images each: p1-p2 normal (no lesion), p3-p5 benign, p6-p8 malignant.
TABLE_PATIENTS = [f"p{k}" for k in range(1, 9) for _ in range(2)]
TABLE_LABELS = ["normal"] * 4 + ["benign"] * 6 + ["malignant"] * 6


def multitask_rows(seed: int, quality: float, *, multitask: bool = True,
                   patients: bool = True) -> list[dict]:
    """A multitask model's evaluation rows of 16 images (`TABLE_PATIENTS`, `TABLE_LABELS`):
    segmentation metrics and, with `multitask`, class probabilities; better with `quality`."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, (patient, label) in enumerate(zip(TABLE_PATIENTS, TABLE_LABELS, strict=True)):
        lesion = label != "normal"
        dice = float(np.clip(quality + rng.normal(0, 0.1), 0, 1)) if lesion else 1.0
        row = {"image_id": f"img{k:02d}.png", "patient_id": patient if patients else None,
               "label": label, "truth_lesion": int(lesion), "dice": dice,
               "iou": dice / (2 - dice), "recall": dice if lesion else None,
               "hd95_px": float(rng.uniform(2, 20)) if lesion else None, "hd95_mm": None}
        if multitask:
            logits = rng.normal(0, 1, 3) + 3 * quality * (np.array(CLS_CLASSES) == label)
            probs = np.exp(logits) / np.exp(logits).sum()
            row |= {"predicted_class": CLS_CLASSES[int(probs.argmax())],
                    **{f"prob_{c}": float(p) for c, p in zip(CLS_CLASSES, probs, strict=True)}}
        rows.append(row)
    return rows


def detector_table(stem: Path, ids: list[str], labels: list[str],
                   scores: list[float] | np.ndarray) -> Path:
    """A detector's predictions table (QIMS 2023's image-level ``malignant_score``) of lesion
    images, as `sonocad combine` reads it; returns the CSV."""
    from sonocad.predictions import write_predictions

    write_predictions(stem, [
        {"image_id": i, "patient_id": None, "label": label, "predicted_class": "normal",
         "malignant_score": float(score)}
        for i, label, score in zip(ids, labels, scores, strict=True)])
    return stem.with_suffix(".csv")


# --- data sets and what each test starts from --------------------------------------------------

@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The BUSI folder beside the project (../shared/datasets/busi/Dataset_BUSI_with_GT)."""
    if not (BUSI_ROOT / "benign").is_dir():
        pytest.skip(f"BUSI data set not found at {BUSI_ROOT} (see ../shared/datasets/README.md)")
    return BUSI_ROOT


@pytest.fixture(scope="session")
def busi_duplicate_groups(busi_root: Path) -> list:
    """BUSI's duplicate groups, searched once for the tests that check them (10 s)."""
    from sonocad.data.adapters import open_dataset
    from sonocad.data.duplicates import find_duplicate_groups

    return find_duplicate_groups(open_dataset(busi_root))


@pytest.fixture(scope="session")
def busbra_root() -> Path:
    """The BUS-BRA folder beside the project (../shared/datasets/busbra/BUSBRA)."""
    if not (BUSBRA_ROOT / "bus_data.csv").is_file():
        pytest.skip(f"BUS-BRA data set not found at {BUSBRA_ROOT} "
                    "(see ../shared/datasets/README.md)")
    return BUSBRA_ROOT


@pytest.fixture(autouse=True)
def _release_output_claims():
    """Each test's output folders are unlocked after it, as a command's are when it ends."""
    from sonocad.io.outputs import release_claims

    yield
    release_claims()


@pytest.fixture(autouse=True)
def _progress_lines_at_the_old_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """No progress line within a test's first 30 s (FIRST_LOG_S is 2 s), so that a test's
    stderr does not depend on the machine's speed; tests/test_progress_units.py sets its own."""
    from sonocad import progress

    monkeypatch.setattr(progress, "FIRST_LOG_S", progress.LOG_EVERY_S)


# --- tiny recipes: a few steps on phantoms -----------------------------------------------------

# a small U-Net, 4 epochs (tests/test_trainer.py, tests/test_progress_units.py)
TINY_UNET_RECIPE = """\
task: segmentation
model: {name: unet, args: {base_width: 8, depth: 2, norm: group}}
transform:
  input_size: 32
  normalize: zscore
  keep_aspect: false
  augment: {hflip: {p: 0.5}, rotation: {degrees: 10, p: 0.5}, brightness: {p: 0.5}}
loss: {name: bce_dice}
optimizer: {name: adamw, lr: 0.003}
scheduler: {name: cosine}
train: {batch_size: 4, epochs: 4, select_metric: dice, eval_batch_size: 8}
"""

# multitask, 2 steps at 64 px (tests/test_multitask.py, tests/test_report.py)
TINY_MULTITASK_RECIPE = """\
task: multitask
model: {name: efficientnet_lite0_unet}
data: {classes: [normal, benign, malignant]}
transform: {input_size: 64, normalize: imagenet, augment: {hflip: {p: 0.5}}}
loss: {name: bce_dice, classification: {weight: 0.5, args: {label_smoothing: 0.1}}}
optimizer: {name: adamw, lr: 0.001}
train: {batch_size: 4, epochs: 1, max_steps: 2, channels_last: true}
"""


# --- tiny checkpoints --------------------------------------------------------------------------

def checkpoint_meta(task: str, name: str, args: dict, class_names: list[str],
                    input_size: int = 32) -> dict:
    """A checkpoint's meta for model `name(**args)`: the evaluation transform at `input_size`,
    empty recipe, data and metrics."""
    from sonocad.transforms import TransformConfig

    return {"task": task, "model": {"name": name, "args": args}, "class_names": class_names,
            "transform": TransformConfig(input_size=input_size).to_dict(), "recipe": {},
            "data": {}, "metrics": {}}


def write_checkpoint(path: Path, task: str, name: str, args: dict, class_names: list[str],
                     state_dict: dict, input_size: int = 32) -> Path:
    """`path`, now a checkpoint of model `name(**args)` with `state_dict`."""
    from sonocad.checkpoint import Checkpoint, save_checkpoint

    save_checkpoint(path, Checkpoint(checkpoint_meta(task, name, args, class_names, input_size),
                                     state_dict))
    return path


def unet_checkpoint(path: Path, lesion_logit: float, input_size: int = 32) -> Path:
    """A tiny U-Net whose head ignores its features: every pixel gets `lesion_logit`, so the
    predicted mask is all lesion (> 0) or all background (< 0) whatever the image."""
    import torch

    from sonocad.models import create_model

    model = create_model("unet", **UNET_ARGS)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.constant_(model.head.bias, lesion_logit)
    return write_checkpoint(path, "segmentation", "unet", UNET_ARGS, SEG_CLASSES,
                            model.state_dict(), input_size)


def benign_classifier_checkpoint(path: Path, input_size: int = 32) -> Path:
    """A ResNet34 checkpoint that calls every image benign with probability e^2 / (2 + e^2)."""
    import torch

    from sonocad.models import create_model

    model = create_model("resnet34", num_classes=3)
    torch.nn.init.zeros_(model.fc.weight)
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([0.0, 2.0, 0.0]))
    return write_checkpoint(path, "classification", "resnet34", {"num_classes": 3},
                            CLS_CLASSES, model.state_dict(), input_size)


def edited(source: Path, edit: Callable[[Checkpoint], None]) -> Callable[[Path], Path]:
    """A maker of a copy of checkpoint `source` that `edit(checkpoint)` has changed."""
    def make(path: Path) -> Path:
        from sonocad.checkpoint import load_checkpoint, save_checkpoint

        loaded = load_checkpoint(source)
        edit(loaded)
        save_checkpoint(path, loaded)
        return path
    return make


@pytest.fixture(scope="module")
def lesion_everywhere(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net that calls every pixel lesion, so sizes are known exactly."""
    return unet_checkpoint(tmp_path_factory.mktemp("ckpt") / "all.pt", 5.0)


@pytest.fixture(scope="module")
def checkpoint(lesion_everywhere: Path) -> Path:
    """The checkpoint most tests predict with: `lesion_everywhere`."""
    return lesion_everywhere


@pytest.fixture(scope="module")
def no_lesion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny U-Net that finds no lesion anywhere."""
    return unet_checkpoint(tmp_path_factory.mktemp("ckpt") / "none.pt", -5.0)


# --- phantom data sets, input files and outputs ------------------------------------------------

def phantom_dataset(root: Path, per_class: int, size: tuple[int, int],
                    seed: int) -> tuple[Path, Path]:
    """`root`/data, a phantom data set of `per_class` images a class at `size`, and
    `root`/split.json, its split: half training, a quarter validation, a quarter test."""
    from sonocad.data.adapters import open_dataset
    from sonocad.data.phantom import write_phantom_dataset
    from sonocad.data.split import make_split, write_split

    data, split = root / "data", root / "split.json"
    write_phantom_dataset(data, per_class=per_class, size=size, seed=seed)
    write_split(split, make_split(open_dataset(data), [], fractions=(0.5, 0.25, 0.25), seed=0))
    return data, split


def training_inputs(root: Path, recipe: str, per_class: int, size: tuple[int, int],
                    seed: int) -> tuple[Path, Path, Path]:
    """`phantom_dataset(root, ...)` and `root`/tiny.yaml, now `recipe`: the data, the split and
    the recipe a test trains on."""
    data, split = phantom_dataset(root, per_class, size, seed)
    (root / "tiny.yaml").write_text(recipe)
    return data, split, root / "tiny.yaml"


def png(path: Path, seed: int = 0, size: tuple[int, int] = (40, 56),
        label: str = "benign") -> Path:
    """`path` (and its folder), now a phantom of `label` as a grey PNG."""
    from PIL import Image as PILImage

    from sonocad.data.phantom import make_phantom

    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(make_phantom(label, size=size, seed=seed).image).save(path)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file below `root` by relative path -> its SHA-256: equal digests, untouched tree."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --- running sonocad ---------------------------------------------------------------------------

def run_cli(argv: list[object], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """The exit code and stderr's lines of `sonocad ARGV`: never a traceback or an internal
    error."""
    from sonocad.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err and "a bug in sonocad" not in err, err
    return code, [line for line in err.splitlines() if line.strip()]


def predict_beside_a_good_image(make: Callable[[Path], Path], tmp_path: Path, checkpoint: Path,
                                capsys: pytest.CaptureFixture) -> tuple[int, list[str], Path]:
    """`sonocad predict` on folder `tmp_path`/in of a good PNG and the file `make(folder)`
    writes there: its exit code, stderr's lines and that file, once the good image's mask is
    written (the batch carried on) and the folder is checked untouched."""
    folder = tmp_path / "in"
    png(folder / "good.png")
    bad = make(folder)
    before = tree_digest(folder)
    code, lines = run_cli(["predict", checkpoint, folder, "--out", tmp_path / "out"], capsys)
    assert (tmp_path / "out" / "masks" / "good.png").is_file(), lines  # the batch carried on
    assert tree_digest(folder) == before
    return code, lines, bad


@contextmanager
def serving(server: uvicorn.Server) -> Iterator[int]:
    """uvicorn `server` on a free loopback port, in a thread, until the block ends; yields the
    port."""
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield listener.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


def assert_one_fatal_line_each(cases: dict[str, tuple[Callable[[Path], Path], str]],
                               tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`sonocad predict` with each bad checkpoint of `cases` (kind -> (maker of the file at a
    path, the problem its line names)) on a good image: a fatal error in one line naming the
    file and the problem, and the file left as it was."""
    image = png(tmp_path / "in" / "good.png")
    for number, (kind, (make, problem)) in enumerate(sorted(cases.items())):
        bad = make(tmp_path / f"bad{number}.pt")
        digest = bad.read_bytes()
        code, lines = run_cli(["predict", bad, image, "--out", tmp_path / f"out{number}"], capsys)
        assert code == EXIT_FATAL, kind
        assert len(lines) == 1 and lines[0].startswith(f"sonocad: error: {bad}: "), (kind, lines)
        assert problem in lines[0], (kind, lines[0])
        assert bad.read_bytes() == digest


# --- hostile files: codestreams and DICOMs whose headers lie about their size ------------------

HEADER_SIDE = 256  # what every bomb's header says: 256 x 256 grey, 8 bits


def grey(side: int = 64) -> np.ndarray:
    """`side` x `side` random grey pixels, the same every call."""
    return np.random.default_rng(0).integers(0, 255, (side, side), dtype=np.uint8)


def pillow_codestream(format: str, **save: object) -> bytes:
    """`grey()` saved by Pillow as `format`."""
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.fromarray(grey()).save(buffer, format, **save)
    return buffer.getvalue()


def jpeg(width: int, height: int, fill: bytes = b"") -> bytes:
    """A real 64 x 64 baseline JPEG whose frame header (SOF0) says width x height; `fill`
    (0xFF bytes) before that marker, which decoders skip."""
    stream = pillow_codestream("JPEG")
    at = stream.index(b"\xff\xc0")
    sof = stream[at:at + 5] + struct.pack(">HH", height, width)
    return stream[:at] + fill + sof + stream[at + 9:]


def jpeg_ls(width: int, height: int) -> bytes:
    """An 11.5 KB JPEG-LS codestream whose frame header (SOF55) says width x height: only the
    header matters, decoding must be refused before it starts."""
    sof = b"\xff\xf7" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x00\x00"
    return b"\xff\xd8" + sof + sos + bytes(11_500) + b"\xff\xd9"


def compressed_dicom(name: str, syntax: str, *frames: bytes,
                     side: int = HEADER_SIDE) -> Callable[[Path], Path]:
    """A maker of DICOM `name` in a folder: `frames` encapsulated under transfer syntax
    `syntax`, in a header of `side` x `side` grey pixels."""
    def make(folder: Path) -> Path:
        from pydicom import Dataset, FileMetaDataset
        from pydicom.encaps import encapsulate
        from pydicom.uid import (
            UltrasoundImageStorage,
            UltrasoundMultiFrameImageStorage,
            generate_uid,
        )

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.SOPClassUID = UltrasoundMultiFrameImageStorage if len(frames) > 1 \
            else UltrasoundImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.Rows = ds.Columns = side
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate(list(frames))
        ds["PixelData"].VR = "OB"
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        return path
    return make


def dicom_header(syntax: str | None = None) -> Dataset:
    """A grey 8-bit ultrasound data set of HEADER_SIDE x HEADER_SIDE without pixel data, under
    transfer syntax `syntax` (Explicit VR Little Endian)."""
    from pydicom import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UltrasoundImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows = ds.Columns = HEADER_SIDE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


def deflated_dicom(name: str, inflated: int, deflate: bool = True) -> Callable[[Path], Path]:
    """A maker of a Deflated DICOM whose data set inflates to about `inflated` bytes of zero
    pixel data (compressed a MiB at a time, never held); `deflate=False`: random bytes in its
    place."""
    def make(folder: Path) -> Path:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset, write_file_meta_info
        from pydicom.uid import DeflatedExplicitVRLittleEndian

        ds = dicom_header(DeflatedExplicitVRLittleEndian)
        meta, body = DicomBytesIO(), DicomBytesIO()
        for stream in (meta, body):
            stream.is_little_endian, stream.is_implicit_VR = True, False
        write_file_meta_info(meta, ds.file_meta)
        del ds.file_meta
        write_dataset(body, ds)
        body.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated))
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)  # raw, as A.5 says
        parts = [compressor.compress(body.getvalue())]
        zeros = bytes(2**20)
        parts += [compressor.compress(zeros) for _ in range(inflated // len(zeros))]
        parts.append(compressor.compress(bytes(inflated % len(zeros))) + compressor.flush())
        data = b"".join(parts) if deflate else np.random.default_rng(0).bytes(4096)
        path = folder / name
        path.write_bytes(bytes(128) + b"DICM" + meta.getvalue() + data)
        return path
    return make



def traced_peak_of_refusals(path: Path, pixels: str) -> int:
    """`read_image(path)` and `iter_frames(path)`, each refused as "image too large (`pixels`
    pixels; ...)": the peak of Python's allocations meanwhile, in bytes."""
    import tracemalloc

    from sonocad.errors import InputError
    from sonocad.io.images import iter_frames, read_image

    tracemalloc.start()
    try:
        for read in (read_image, iter_frames):
            with pytest.raises(InputError) as caught:
                read(path)
            assert str(caught.value) == (f"{path}: image too large ({pixels} pixels; the "
                                         "limit is 16,777,216 pixels per image or frame)")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

# --- this process's memory (Linux) -------------------------------------------------------------

def reset_peak() -> None:
    """VmHWM := VmRSS."""
    Path("/proc/self/clear_refs").write_text("5")


def megabytes(field: str) -> float:
    """VmRSS, or VmHWM (the peak since `reset_peak`), of this process in MB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field))
    return int(line.split()[1]) / 1024
