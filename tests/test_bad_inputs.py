"""A corpus of bad inputs, made at test time: every one gets one line naming the file and the
problem, the right exit code (1: some inputs failed, the batch carried on; 2: usage or fatal
error), never a traceback, and leaves every input byte for byte as it was."""

from __future__ import annotations

import asyncio
import io
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi import HTTPException
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from pydicom import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    RLELossless,
    UltrasoundImageStorage,
    generate_uid,
)

from conftest import (
    EXIT_FATAL,
    EXIT_SOME_FAILED,
    assert_one_fatal_line_each,
    edited,
    png,
    predict_beside_a_good_image,
    run_cli,
    tree_digest,
)
from sonocad.checkpoint import FORMAT, Checkpoint, load_checkpoint
from sonocad.cli import main
from sonocad.errors import InputError
from sonocad.inference.predictor import Predictor
from sonocad.serve import create_app
from sonocad.serve.uploads import UploadLimit

# --- image files: predict skips them, names them, and predicts the good image beside them -----

def _png_header(width: int, height: int, body: bytes = b"") -> bytes:
    """A PNG whose header announces width x height grey pixels (the data need not follow)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND",
                                                                                      b"")


def _write(name: str, data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_bytes(data)
        return path
    return make


def _image(name: str, pixels: np.ndarray, **save) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        PILImage.fromarray(pixels).save(path, **save)
        return path
    return make


def _truncated_png(folder: Path) -> Path:
    whole = png(folder / "whole.tmpimg.png", seed=3).read_bytes()
    (folder / "whole.tmpimg.png").unlink()
    return _write("truncated.png", whole[: len(whole) // 2])(folder)


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "pipe.png")
    return folder / "pipe.png"


def _broken_link(folder: Path) -> Path:
    (folder / "gone.png").symlink_to(folder / "nowhere.png")
    return folder / "gone.png"


def _dicom(name: str, edit: Callable[[Dataset], None] | None = None,
           pixels: np.ndarray | None = None) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = UltrasoundImageStorage
        ds.set_pixel_data(np.full((48, 48), 90, np.uint8) if pixels is None else pixels,
                          "MONOCHROME2", 8)
        if edit is not None:
            edit(ds)
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        return path
    return make


def _huge_rle_dicom(folder: Path) -> Path:
    """11000 x 11000 pixels announced; a few hundred bytes of RLE data on disk."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RLELossless
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, generate_uid()
    ds.Rows = ds.Columns = 11000
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    run = b"\x81\x00" * (11000 // 128 + 1)  # RLE: repeat 0 -> every row from a few bytes
    segment = run * 11000
    header = struct.pack("<16I", 1, 64, *[0] * 14)
    frame = header + segment + (b"\x00" if len(segment) % 2 else b"")
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    path = folder / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _grey(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)


def _drop(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


def _short_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:100]


def _float_tiff_with_nan(folder: Path) -> Path:
    values = np.full((40, 40), np.nan, np.float32)
    path = folder / "nan.tif"
    PILImage.fromarray(values, mode="F").save(path)
    return path


def _gif(folder: Path) -> Path:
    path = folder / "animated.png"
    PILImage.fromarray(_grey(40, 40)).save(path, format="GIF")
    return path


def _newline_name(folder: Path) -> Path:
    return _write("two\nlines.png", b"not an image")(folder)


def _control_text_name(folder: Path) -> Path:
    return _write("bell\x07.png", b"\x89PNG\r\n\x1a\n garbage")(folder)


IMAGE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "empty file": (_write("empty.png", b""), "file is empty"),
    "text named .png": (_write("notes.png", b"these are notes\n"), "not a PNG, JPEG"),
    "truncated PNG": (_truncated_png, "cannot read image"),
    "PNG header only": (_write("header.png", _png_header(64, 64)), "cannot read image"),
    "garbage JPEG": (_write("noise.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4),
                     "cannot read image|not a PNG, JPEG"),
    "GIF renamed .png": (_gif, "not a PNG, JPEG"),
    "10000 x 10000 PNG bomb": (_write("bomb.png", _png_header(10000, 10000)), "too large"),
    "1 x 1 image": (_image("dot.png", _grey(1, 1)), "too small"),
    "5000 x 3 strip": (_image("strip.png", _grey(3, 5000)), "too small"),
    "float TIFF of NaN": (_float_tiff_with_nan, "NaN or infinite"),
    "FIFO named .png": (_fifo, "not a regular file"),
    "broken link": (_broken_link, "not a regular file"),
    "newline in the file name": (_newline_name, "not a PNG, JPEG"),
    "control character in the name": (_control_text_name, "cannot read image|not a PNG"),
    "DICOM without pixel data": (_dicom("nopixels.dcm", _drop("PixelData")), "pixel data"),
    "DICOM with short pixel data": (_dicom("short.dcm", _short_pixels), "DICOM"),
    "DICOM without Rows": (_dicom("norows.dcm", _drop("Rows")), "DICOM"),
    "11000 x 11000 RLE DICOM": (_huge_rle_dicom, "too large"),
    "not DICOM, named .dcm": (_write("fake.dcm", b"\x00" * 300), "DICOM"),
    "DICOM preamble, then garbage": (_write("scan", b"\x00" * 128 + b"DICM" + b"\x01" * 64),
                                     "DICOM"),
}


@pytest.mark.parametrize("kind", sorted(IMAGE_CASES))
def test_predict_skips_a_bad_image_in_one_line_and_carries_on(
        kind: str, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    make, problem = IMAGE_CASES[kind]
    code, lines, bad = predict_beside_a_good_image(make, tmp_path, checkpoint, capsys)
    assert code == EXIT_SOME_FAILED
    skipped = [line for line in lines if line.startswith("sonocad: skipped")]
    assert len(skipped) == 1, lines
    assert all(part in skipped[0] for part in re.split(r"[\x00-\x1f]", bad.name))
    assert re.search(problem, skipped[0]), skipped[0]


def test_predict_names_inputs_that_are_no_files(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    good = png(tmp_path / "good.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "folder.png").mkdir()
    before = tree_digest(tmp_path)
    code, lines = run_cli(["predict", checkpoint, good, tmp_path / "loop.png",
                        tmp_path / "folder.png", tmp_path / "missing.png",
                        str(tmp_path / "none*.png"), "--out", tmp_path / "out"], capsys)
    assert code == EXIT_SOME_FAILED
    problems = [line for line in lines if line.startswith("sonocad: skipped")]
    assert len(problems) == 4, lines
    for name, problem in [("loop.png", "symbolic links|loop"), ("folder.png", "no image files"),
                          ("missing.png", "file not found"), ("none*.png", "no image files")]:
        assert any(name in line and re.search(problem, line)
                   for line in problems), (name, problems)
    assert (tmp_path / "out" / "masks" / "good.png").is_file()
    after = tree_digest(tmp_path)
    assert all(after[name] == digest for name, digest in before.items())


# --- checkpoints: fatal (exit 2), one line naming the file ---------------------------------

def _raw(data: bytes) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        path.write_bytes(data)
        return path
    return make


def _save_payload(payload: object) -> Callable[[Path], Path]:
    def make(path: Path) -> Path:
        torch.save(payload, path)
        return path
    return make


def _checkpoint_cases(good: Path) -> dict[str, tuple[Callable[[Path], Path], str]]:
    def rename_weight(c: Checkpoint) -> None:
        c.state_dict = {f"x.{k}": v for k, v in c.state_dict.items()}

    def reshape_weight(c: Checkpoint) -> None:
        name = next(iter(c.state_dict))
        c.state_dict[name] = torch.zeros(3, 3)

    return {
        "random bytes": (_raw(np.random.default_rng(1).bytes(512)), "not a readable checkpoint"),
        "empty file": (_raw(b""), "not a readable checkpoint"),
        "another program's torch file": (_save_payload({"weights": torch.zeros(2)}),
                                         "not a sonocad checkpoint"),
        "a bare tensor": (_save_payload(torch.zeros(3)), "not a sonocad checkpoint"),
        "meta without a task": (_save_payload({"meta": {"format": FORMAT}, "state_dict": {}}),
                                "damaged sonocad checkpoint"),
        "weights not tensors": (edited(good, lambda c: c.state_dict.update(x=[1, 2])),
                                "damaged sonocad checkpoint"),
        "weights of another model": (edited(good, rename_weight), "do not fit"),
        "weights of another size": (edited(good, reshape_weight), "do not fit"),
        "unknown model": (edited(good, lambda c: c.meta["model"].update(name="nonesuch")),
                          "cannot build its model"),
        "unknown model argument": (edited(good, lambda c: c.meta["model"]["args"].update(
            wings=2)), "cannot build its model"),
    }


def test_bad_checkpoints_are_one_line_fatal_errors(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    cases = _checkpoint_cases(checkpoint)
    assert len(cases) == 10
    assert_one_fatal_line_each(cases, tmp_path, capsys)


# --- data check, data split, evaluate --------------------------------------------------------

def _manifest(folder: Path, rows: list[str], header: str = "image,label,patient_id") -> Path:
    for i in range(12):
        png(folder / f"i{i}.png", seed=i)
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _rows(n: int = 12, spacing: str | None = None) -> list[str]:
    labels = ["benign", "malignant"]
    return [f"i{i}.png,{labels[i % 2]},p{i}" + (f",{spacing}" if spacing else "")
            for i in range(n)]


@pytest.mark.parametrize("spacing", ["nan", "inf", "-0.1", "0", "a lot"])
def test_data_check_names_the_line_of_a_bad_spacing(spacing: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path, _rows(spacing=spacing),
                         header="image,label,patient_id,pixel_spacing_mm")
    before = tree_digest(tmp_path)
    code, lines = run_cli(["data", "check", manifest], capsys)
    assert code == EXIT_FATAL
    assert lines == [f"sonocad: error: {manifest}: line 2: pixel_spacing_mm {spacing!r} is not "
                     "one or two positive numbers"]
    assert tree_digest(tmp_path) == before


def test_data_check_lists_each_bad_file_and_carries_on(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path, [*_rows(10), "missing.png,benign,p10", "i11.png,benign,p11"])
    (tmp_path / "i11.png").write_bytes(b"garbage")
    before = tree_digest(tmp_path)
    code = main(["data", "check", str(manifest)])
    out = capsys.readouterr()
    assert code == EXIT_SOME_FAILED and "Traceback" not in out.err
    assert "missing.png" in out.out and "i11.png" in out.out
    assert tree_digest(tmp_path) == before


def test_data_split_of_too_few_patients_is_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path, _rows(3))
    code, lines = run_cli(["data", "split", manifest, "--out", tmp_path / "split.json"], capsys)
    assert code == EXIT_FATAL and len(lines) == 1 and "too few" in lines[0]
    assert not (tmp_path / "split.json").exists()
    code, lines = run_cli(["data", "split", manifest, "--folds", "5", "--out",
                        tmp_path / "split.json"], capsys)
    assert code == EXIT_FATAL and len(lines) == 1 and "cannot make 5 folds" in lines[0]


def test_data_split_warns_when_a_subset_lacks_a_class(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    rows = [f"i{i}.png,{'malignant' if i == 0 else 'benign'},p{i}" for i in range(12)]
    manifest = _manifest(tmp_path, rows)
    code, lines = run_cli(["data", "split", manifest, "--out", tmp_path / "split.json"], capsys)
    assert code == 0
    assert sum("warning: subset" in line and "no malignant image" in line for line in lines) == 2


@pytest.mark.parametrize("kind, text, problem", [
    ("not JSON", "{ nope", "split"),
    ("a list", "[1, 2]", "split"),
    ("no subsets", '{"format": "sonocad-split/1"}', "split"),
])
def test_evaluate_refuses_a_bad_split_file_in_one_line(
        kind: str, text: str, problem: str, tmp_path: Path, checkpoint: Path,
        capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path / "data", _rows())
    split = tmp_path / "split.json"
    split.write_text(text)
    code, lines = run_cli(["evaluate", checkpoint, "--data", manifest, "--split", f"{split}:test",
                        "--out", tmp_path / "eval"], capsys)
    assert code == EXIT_FATAL and len(lines) == 1, (kind, lines)
    assert lines[0].startswith("sonocad: error: ") and problem in lines[0], (kind, lines)
    assert split.read_text() == text


def test_evaluate_names_a_missing_subset(tmp_path: Path, checkpoint: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    manifest = _manifest(tmp_path / "data", _rows())
    assert main(["data", "split", str(manifest), "--out", str(tmp_path / "split.json")]) == 0
    capsys.readouterr()
    code, lines = run_cli(["evaluate", checkpoint, "--data", manifest, "--split",
                        f"{tmp_path / 'split.json'}:tset", "--out", tmp_path / "eval"], capsys)
    assert code == EXIT_FATAL and len(lines) == 1 and "tset" in lines[0], lines


def test_train_into_an_earlier_run_needs_resume_or_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from sonocad.engine import trainer

    def loads_data(*args: object) -> None:
        raise AssertionError("the data were loaded before the output folder was checked")

    monkeypatch.setattr(trainer, "_Trainer", loads_data)  # refused at once, not after loading
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"an earlier run's weights")
    code, lines = run_cli(["train", "recipes/default.yaml", "--out", run, "max_steps=1"], capsys)
    assert code == EXIT_FATAL and len(lines) == 1 and "not empty" in lines[0], lines
    assert (run / "best.pt").read_bytes() == b"an earlier run's weights"


# --- serve uploads ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(checkpoint: Path):
    with TestClient(create_app(Predictor(checkpoint)), base_url="http://localhost") as test_client:
        yield test_client


def _encoded(pixels: np.ndarray, format: str) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def _dicom_bytes(make: Callable[[Path], Path], tmp_path: Path) -> bytes:
    return make(tmp_path).read_bytes()


@pytest.mark.parametrize("kind", ["text", "empty", "truncated PNG", "PNG bomb", "1 x 1 PNG",
                                  "huge RLE DICOM", "DICOM without pixels"])
def test_serve_refuses_a_bad_upload_in_one_line(kind: str, client: TestClient,
                                                tmp_path: Path) -> None:
    good = _encoded(_grey(40, 56), "PNG")
    data = {
        "text": b"hello, this is not an image",
        "empty": b"",
        "truncated PNG": good[: len(good) // 2],
        "PNG bomb": _png_header(10000, 10000),
        "1 x 1 PNG": _encoded(_grey(1, 1), "PNG"),
        "huge RLE DICOM": _huge_rle_dicom(tmp_path).read_bytes(),
        "DICOM without pixels": _dicom("x.dcm", _drop("PixelData"))(tmp_path).read_bytes(),
    }[kind]
    response = client.post("/api/predict", files={"file": ("scan", data, "image/png")})
    assert 400 <= response.status_code < 500, (kind, response.status_code)
    message = response.json()["detail"]
    assert isinstance(message, str) and "\n" not in message and "/tmp" not in message
    assert client.post("/api/predict", files={"file": ("ok.png", good, "image/png")}
                       ).status_code == 200  # the server carries on


def test_a_stalled_upload_body_times_out_with_408() -> None:
    async def reads_the_body(scope, receive, send):
        await receive()

    async def never_sends():
        await asyncio.sleep(3600)

    limited = UploadLimit(reads_the_body, "/api/predict", max_bytes=1000, read_timeout_s=0.05)
    scope = {"type": "http", "path": "/api/predict", "headers": []}
    with pytest.raises(HTTPException) as raised:
        asyncio.run(limited(scope, never_sends, None))
    assert raised.value.status_code == 408 and "stalled" in raised.value.detail


def test_any_garbage_is_not_a_readable_checkpoint_in_one_line(tmp_path: Path) -> None:
    """torch's weights-only unpickler raises IndexError, KeyError, UnicodeDecodeError, ... on
    random bytes (about 1 file in 11) and warns: every one must be the same one-line error."""
    rng = np.random.default_rng(0)
    path = tmp_path / "garbage.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be more stderr than one line
        for _ in range(300):
            path.write_bytes(rng.bytes(int(rng.integers(1, 600))))
            with pytest.raises(InputError, match="not a readable checkpoint"):
                load_checkpoint(path)
