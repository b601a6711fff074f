"""Decode budgets the decoder cannot bypass (issue 28, items 6, 8, 9, 16, 17, 22, 29, 31, 32),
made at test time: compressed DICOM frames whose codestream is larger than their header says,
Deflate bombs and valid Deflated files, TIFFs of thousands of pages, text and non-finite DICOM
attributes, and checkpoint or ONNX meta out of bounds or asking for pretrained weights. Each is
one kind: one line naming the file, the batch carries on, inputs stay byte for byte as they
were, and the bombs stay within a memory limit."""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import PIL.TiffImagePlugin
import pytest
import torch
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from conftest import (
    EXIT_FATAL,
    EXIT_SOME_FAILED,
    HEADER_SIDE,
    assert_one_fatal_line_each,
    compressed_dicom,
    deflated_dicom,
    dicom_header,
    edited,
    grey,
    jpeg,
    jpeg_ls,
    megabytes,
    pillow_codestream,
    png,
    predict_beside_a_good_image,
    reset_peak,
    run_cli,
    tree_digest,
)
from sonocad.checkpoint import (
    BUNDLED_MODEL,
    MAX_CLASSES,
    MAX_INPUT_SIDE,
    Checkpoint,
    load_checkpoint,
)
from sonocad.errors import InputError
from sonocad.io import dicom
from sonocad.io.images import iter_frames, read_image
from sonocad.io.pixels import MAX_FRAMES

# --- compressed frames whose codestream says another size (item 6) ------------------------------

def _j2k(width: int, height: int, jp2: bool = False) -> bytes:
    """A real 64 x 64 JPEG 2000 codestream whose SIZ segment says width x height; `jp2`: inside
    the boxes of a JP2 file, as some writers store it."""
    stream = bytearray(pillow_codestream("JPEG2000", no_jp2=not jp2))
    siz = stream.index(b"\xff\x4f\xff\x51")
    stream[siz + 8:siz + 16] = struct.pack(">II", width, height)
    return bytes(stream)


def _rle(runs: int) -> bytes:
    """One RLE segment of `runs` replicate runs of 128 zeros: 2 bytes ask for 128."""
    segment = b"\x81\x00" * runs
    return struct.pack("<16I", 1, 64, *[0] * 14) + segment


CODESTREAM_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "JPEG-LS codestream of 40000 x 40000 in a 256 x 256 header": (
        compressed_dicom("jls.dcm", JPEGLSLossless, jpeg_ls(40_000, 40_000)),
        "image too large: frame 1's JPEG-LS codestream is 40000 x 40000 pixels"),
    "baseline JPEG codestream of 13000 x 13000": (
        compressed_dicom("jpeg.dcm", JPEGBaseline8Bit, jpeg(13_000, 13_000)),
        "image too large: frame 1's JPEG codestream is 13000 x 13000 pixels"),
    "JPEG frame header behind fill bytes": (
        compressed_dicom("fill.dcm", JPEGBaseline8Bit, jpeg(13_000, 13_000, b"\xff" * 3)),
        "image too large: frame 1's JPEG codestream is 13000 x 13000"),
    "JPEG 2000 codestream of 40000 x 40000": (
        compressed_dicom("j2k.dcm", JPEG2000Lossless, _j2k(40_000, 40_000)),
        "image too large: frame 1's JPEG 2000 codestream is 40000 x 40000"),
    "JPEG 2000 in a JP2 file of 40000 x 40000": (
        compressed_dicom("jp2.dcm", JPEG2000Lossless, _j2k(40_000, 40_000, jp2=True)),
        "image too large: frame 1's JPEG 2000 codestream is 40000 x 40000"),
    "JPEG codestream smaller than its header": (
        compressed_dicom("small.dcm", JPEGBaseline8Bit, jpeg(64, 64)),
        "JPEG codestream is 64 x 64 pixels, but the header says 256 x 256"),
    "JPEG frame without a frame header": (
        compressed_dicom("nosof.dcm", JPEGBaseline8Bit, b"\xff\xd8\xff\xd9"),
        "no JPEG frame header"),
    "RLE segment decoding to 64 x its size": (
        compressed_dicom("rle.dcm", RLELossless, _rle(100_000)),
        "frame 1: RLE segment 1 decodes to more than Rows x Columns bytes"),
    "JPEG bomb in frame 2 of a cine loop": (
        compressed_dicom("cine.dcm", JPEGBaseline8Bit, jpeg(64, 64), jpeg(13_000, 13_000),
                          side=64),
        "frame 2's JPEG codestream is 13000 x 13000"),
}


# --- Deflated Explicit VR Little Endian (items 8 and 32) ----------------------------------------

BOMB = dicom.MAX_INFLATED_BYTES + 2**20  # a MiB past the limit: about 100 KB on disk

DEFLATE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "Deflate bomb": (deflated_dicom("bomb.dcm", BOMB),
                     "its Deflated DICOM data set inflates to more than"),
    "Deflated data that is not deflate": (deflated_dicom("garbage.dcm", 1000, deflate=False),
                                          "cannot inflate its Deflated DICOM data set"),
    "Deflated data set cut short": (deflated_dicom("short.dcm", HEADER_SIDE**2 - 100),
                                    "cannot decode DICOM pixel data"),
}


def _deflated_copy(folder: Path) -> Path:
    """pydicom's own valid Deflated file (512 x 512 grey)."""
    return Path(shutil.copyfile(get_testdata_file("image_dfl.dcm"), folder / "dfl.dcm"))


def _deflated_scan(folder: Path) -> Path:
    ds = dicom_header()
    ds.PixelData = grey(HEADER_SIDE).tobytes()
    ds.PixelSpacing = [0.1, 0.2]
    path = folder / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    deflated = dcmread(path)
    deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated.save_as(folder / "scan_dfl.dcm")
    return folder / "scan_dfl.dcm"


def test_a_valid_deflated_dicom_reads_as_its_plain_twin(tmp_path: Path) -> None:
    deflated = _deflated_scan(tmp_path)
    assert dcmread(deflated).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    image = read_image(deflated)
    np.testing.assert_array_equal(image.pixels, read_image(tmp_path / "scan.dcm").pixels)
    assert image.spacing_mm == (0.1, 0.2)
    reference = _deflated_copy(tmp_path)
    np.testing.assert_array_equal(read_image(reference).pixels, dcmread(reference).pixel_array)


@pytest.mark.parametrize("make", [_deflated_copy, _deflated_scan])
def test_predict_reads_a_valid_deflated_dicom(make: Callable[[Path], Path], tmp_path: Path,
                                              checkpoint: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "in").mkdir()
    image = make(tmp_path / "in")
    before = tree_digest(tmp_path / "in")
    code, lines = run_cli(["predict", checkpoint, image, "--out", tmp_path / "out"], capsys)
    assert code == 0 and not any(line.startswith("sonocad:") for line in lines), lines
    assert (tmp_path / "out" / "masks" / f"{image.stem}.png").is_file()
    assert tree_digest(tmp_path / "in") == before


# --- text and non-finite DICOM attributes (items 16, 17, 29) -----------------------------------

def _attributes(name: str, **raw: str) -> Callable[[Path], Path]:
    """A 48 x 48 grey DICOM holding each attribute's text exactly as given, valid or not."""
    def make(folder: Path) -> Path:
        ds = dicom_header()
        ds.Rows = ds.Columns = 48
        ds.PixelData = np.full((48, 48), 90, np.uint8).tobytes()
        for keyword, text in raw.items():
            tag, value = Tag(tag_for_keyword(keyword)), text.encode("latin-1")
            value += b" " * (len(value) % 2)
            ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0,
                                           False, True)
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        return path
    return make


def _region(name: str, delta_x_cm: float) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        ds = dicom_header()
        ds.Rows = ds.Columns = 48
        ds.PixelData = np.full((48, 48), 90, np.uint8).tobytes()
        region = Dataset()
        region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
        region.PhysicalDeltaX, region.PhysicalDeltaY = delta_x_cm, 0.01
        ds.SequenceOfUltrasoundRegions = [region]
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        return path
    return make


ATTRIBUTE_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "text PixelSpacing": (_attributes("spacing.dcm", PixelSpacing="abcde\\0.1"),
                          r"DICOM PixelSpacing 'abcde\\0.1' is not 2 finite numbers"),
    "text ImagerPixelSpacing": (_attributes("imager.dcm", ImagerPixelSpacing="0.1\\x"),
                                "DICOM ImagerPixelSpacing '0.1.x' is not 2 finite numbers"),
    "one-valued PixelSpacing": (_attributes("one.dcm", PixelSpacing="0.1"),
                                "DICOM PixelSpacing '0.1' is not 2 finite numbers"),
    "text WindowWidth": (_attributes("width.dcm", WindowCenter="40", WindowWidth="wide"),
                         "DICOM WindowWidth 'wide' is not a finite number"),
    "text WindowCenter": (_attributes("center.dcm", WindowCenter="mid", WindowWidth="80"),
                          "DICOM WindowCenter 'mid' is not a finite number"),
    "text RescaleSlope": (_attributes("slope.dcm", RescaleSlope="x", RescaleIntercept="0"),
                          "DICOM RescaleSlope 'x' is not a finite number"),
    "text NumberOfFrames": (_attributes("frames.dcm", NumberOfFrames="1A"),
                            "DICOM NumberOfFrames '1A' is not a finite number"),
    "fractional NumberOfFrames": (_attributes("half.dcm", NumberOfFrames="1.5"),
                                  "DICOM NumberOfFrames '1.5' is not a whole number"),
    "NaN RescaleSlope": (_attributes("nanslope.dcm", RescaleSlope="NaN", RescaleIntercept="0"),
                         "DICOM RescaleSlope 'NaN' is not a finite number"),
    "infinite RescaleIntercept": (_attributes("inf.dcm", RescaleSlope="1",
                                              RescaleIntercept="-inf"),
                                  "DICOM RescaleIntercept '-inf' is not a finite number"),
    "NaN WindowCenter": (_attributes("nancenter.dcm", WindowCenter="NaN", WindowWidth="80"),
                         "DICOM WindowCenter 'NaN' is not a finite number"),
    "NaN PixelSpacing": (_attributes("nanspacing.dcm", PixelSpacing="nan\\nan"),
                         "DICOM PixelSpacing 'nan.nan' is not 2 finite numbers"),
    "rescale overflowing to infinity": (_attributes("huge.dcm", RescaleSlope="1e308",
                                                    RescaleIntercept="0"),
                                        "its rescale or window values make pixels NaN or "
                                        "infinite"),
    "NaN ultrasound region delta": (_region("region.dcm", float("nan")),
                                    "SequenceOfUltrasoundRegions has a PhysicalDeltaX or "
                                    "PhysicalDeltaY that is not a finite number"),
}


def test_zero_spacing_still_means_not_calibrated(tmp_path: Path) -> None:
    path = _attributes("zero.dcm", PixelSpacing="0\\0")(tmp_path)
    image = read_image(path)
    assert image.spacing_mm is None and (image.pixels == 90).all()


# --- TIFF pages (item 9) -------------------------------------------------------------------

def _many_page_tiff(pages: int, side: int = 16) -> Callable[[Path], Path]:
    """A TIFF of `pages` grey side x side pages sharing one strip: about 100 bytes a page."""
    def make(folder: Path) -> Path:
        ifd_size, pixels_at = 2 + 8 * 12 + 4, 8
        first = pixels_at + side * side
        parts = [struct.pack("<2sHI", b"II", 42, first), bytes(range(side * side))]
        for page in range(pages):
            following = first + (page + 1) * ifd_size if page + 1 < pages else 0
            entries = [(256, 3, 1, side), (257, 3, 1, side), (258, 3, 1, 8), (259, 3, 1, 1),
                       (262, 3, 1, 1), (273, 4, 1, pixels_at), (278, 3, 1, side),
                       (279, 4, 1, side * side)]
            parts.append(struct.pack("<H", 8) + b"".join(struct.pack("<HHII", *entry)
                                                         for entry in entries)
                         + struct.pack("<I", following))
        path = folder / f"pages_{pages}.tif"
        path.write_bytes(b"".join(parts))
        return path
    return make


TIFF_CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    f"TIFF of {MAX_FRAMES + 1:,} pages": (
        _many_page_tiff(MAX_FRAMES + 1),
        f"too many frames \\(more than the limit of {MAX_FRAMES:,} frames or pages per file\\)"),
}


@pytest.fixture
def no_page_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow's n_frames reads every page header of a TIFF not yet read (367 s for 100,000
    pages); once the last page has been reached, Pillow knows the count and asks it itself."""
    def known_only(self: PIL.TiffImagePlugin.TiffImageFile) -> int:
        if self._n_frames is None:
            raise AssertionError("asked Pillow for the page count of the whole file")
        return self._n_frames

    monkeypatch.setattr(PIL.TiffImagePlugin.TiffImageFile, "n_frames", property(known_only))


def test_tiff_pages_are_read_one_by_one_never_counted_whole(
        tmp_path: Path, no_page_count: None) -> None:
    path = _many_page_tiff(40)(tmp_path)
    frames = iter_frames(path)
    assert read_image(path).shape == (16, 16)
    assert sum(1 for _ in frames) == 40
    with pytest.raises(InputError, match="too many frames"):
        iter_frames(_many_page_tiff(MAX_FRAMES + 1)(tmp_path))


def test_a_dicom_over_the_frame_limit_is_refused_from_its_header(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _attributes("long.dcm", NumberOfFrames=str(MAX_FRAMES + 1))(tmp_path)
    monkeypatch.setattr(dicom, "iter_pixels", _never_decoded)
    with pytest.raises(InputError, match="too many frames"):
        iter_frames(path)


# --- every image kind through predict: one line, the batch carries on ---------------------------

IMAGE_CASES = {**CODESTREAM_CASES, **DEFLATE_CASES, **ATTRIBUTE_CASES, **TIFF_CASES}


@pytest.mark.parametrize("kind", sorted(IMAGE_CASES))
def test_predict_skips_a_file_over_a_decode_budget_in_one_line(
        kind: str, tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    make, problem = IMAGE_CASES[kind]
    code, lines, bad = predict_beside_a_good_image(make, tmp_path, checkpoint, capsys)
    assert code == EXIT_SOME_FAILED, lines
    skipped = [line for line in lines if line.startswith("sonocad: skipped")]
    assert len(skipped) == 1 and skipped[0].startswith(f"sonocad: skipped {bad}: "), lines
    assert re.search(problem, skipped[0]), skipped[0]


def _never_decoded(*args: object, **kwargs: object):
    raise AssertionError("the decoder was asked for a frame")
    yield  # a generator, as iter_pixels is: created freely, it fails when asked for a frame


@pytest.mark.parametrize("kind", sorted(set(CODESTREAM_CASES) - {"JPEG bomb in frame 2 of a "
                                                                 "cine loop"}))
def test_a_bad_codestream_is_refused_before_the_decoder_runs(
        kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = CODESTREAM_CASES[kind][0](tmp_path)
    monkeypatch.setattr(dicom, "iter_pixels", _never_decoded)
    with pytest.raises(InputError) as caught:
        read_image(path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)


def test_frames_before_a_bomb_in_a_cine_loop_are_read(tmp_path: Path) -> None:
    path = CODESTREAM_CASES["JPEG bomb in frame 2 of a cine loop"][0](tmp_path)
    frames = iter_frames(path)
    assert next(frames).shape == (64, 64)
    with pytest.raises(InputError, match="frame 2's JPEG codestream is 13000 x 13000"):
        next(frames)


# Without the budgets the red team measured 4.27 GB (JPEG-LS), 2.8 GB (JPEG) and 4.19 GB
# (Deflate) at peak. The Deflate bomb inflates to the limit (97 MiB) before it is refused.
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
@pytest.mark.parametrize("kind, peak_mb", [
    ("JPEG-LS codestream of 40000 x 40000 in a 256 x 256 header", 50),
    ("baseline JPEG codestream of 13000 x 13000", 50),
    ("JPEG 2000 codestream of 40000 x 40000", 50),
    ("RLE segment decoding to 64 x its size", 50),
    ("Deflate bomb", 250),
])
def test_a_bomb_is_refused_in_bounded_memory(kind: str, peak_mb: float, tmp_path: Path) -> None:
    path = IMAGE_CASES[kind][0](tmp_path)
    read_image(_deflated_scan(tmp_path))  # imports and first allocations done
    reset_peak()
    before = megabytes("VmRSS")
    with pytest.raises(InputError):
        list(iter_frames(path))
    assert megabytes("VmHWM") - before < peak_mb


# --- checkpoint and ONNX meta (items 22 and 31) ------------------------------------------------

def _meta_cases(good: Path) -> dict[str, tuple[Callable[[Path], Path], str]]:
    def transform(**values: object) -> Callable[[Checkpoint], None]:
        return lambda c: c.meta["transform"].update(values)

    return {
        "input_size 3072": (edited(good, transform(input_size=3072)),
                            f"its meta transform.input_size 3072 is over the limit of "
                            f"{MAX_INPUT_SIDE} pixels a side"),
        "input_size [64, 4096]": (edited(good, transform(input_size=[64, 4096])),
                                  "its meta transform.input_size [64, 4096] is over the limit"),
        "input_size 'big'": (edited(good, transform(input_size="big")),
                             "its meta transform cannot be used (transform input_size must be"),
        "CLAHE tiles over the limit": (edited(good, transform(clahe=True, clahe_tiles=100_000)),
                                       "its meta transform.clahe_tiles 100000 is over the limit"),
        "despeckle filter over the limit": (
            edited(good, transform(despeckle="gaussian", despeckle_size=100_001)),
            "its meta transform.despeckle_size 100001 is over the limit"),
        "class count over the limit": (
            edited(good, lambda c: c.meta.update(class_names=["c"] * (MAX_CLASSES + 1))),
            f"its meta class_names holds {MAX_CLASSES + 1:,} classes, over the limit"),
        "detector resize over the limit": (
            edited(good, lambda c: c.meta["model"]["args"].update(max_size=8192)),
            "its meta model.args.max_size 8192 is not a size within the limit"),
        "model args sizing other tensors": (
            edited(good, lambda c: c.meta["model"]["args"].update(base_width=512)),
            "its weights do not fit model 'unet' (stem"),
    }


def test_checkpoint_meta_out_of_bounds_is_a_one_line_fatal_error(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    assert_one_fatal_line_each(_meta_cases(checkpoint), tmp_path, capsys)


def test_a_model_is_sized_on_the_meta_device_before_it_is_built(
        tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Model arguments could ask for a network of any width (a U-Net 4096 channels wide is
    tens of GB) before its weights are compared with the file's: every build before the
    comparison has no memory behind it. (512 here: a slip would cost 0.4 GB, not the machine.)"""
    import sonocad.models

    devices, real = [], sonocad.models.create_model

    def spy(*args: object, **kwargs: object) -> torch.nn.Module:
        devices.append(torch.empty(0).device.type)
        return real(*args, **kwargs)

    monkeypatch.setattr(sonocad.models, "create_model", spy)
    wide = _meta_cases(checkpoint)["model args sizing other tensors"][0](tmp_path / "wide.pt")
    with pytest.raises(InputError, match="do not fit"):
        load_checkpoint(wide).build_model()
    assert devices == ["meta"]
    load_checkpoint(checkpoint).build_model()
    assert devices == ["meta", "meta", "cpu"]


def test_a_checkpoint_asking_for_pretrained_weights_never_fetches_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import sonocad.models.efficientnet_lite as efficientnet_lite

    def fetch() -> None:
        raise AssertionError("loading a checkpoint fetched pretrained weights")

    monkeypatch.setattr(efficientnet_lite, "imagenet_state_dict", fetch)
    with as_file(files("sonocad").joinpath(*BUNDLED_MODEL)) as bundled:
        asking = edited(bundled, lambda c: c.meta["model"]["args"].update(
            pretrained="imagenet"))(tmp_path / "asking.pt")
    image = png(tmp_path / "in" / "good.png")
    code, lines = run_cli(["predict", asking, image, "--out", tmp_path / "out"], capsys)
    assert code == 0 and not lines, lines


def test_onnx_meta_out_of_bounds_is_a_one_line_fatal_error(
        tmp_path: Path, checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    onnx = pytest.importorskip("onnx")
    from sonocad.inference.export import META_KEY, export_onnx

    model = onnx.load(export_onnx(checkpoint, tmp_path / "good.onnx"))
    entry = next(p for p in model.metadata_props if p.key == META_KEY)
    meta = json.loads(entry.value)
    meta["transform"]["input_size"] = 3072
    entry.value = json.dumps(meta)
    bad = tmp_path / "bad.onnx"
    onnx.save(model, bad)
    image = png(tmp_path / "in" / "good.png")
    code, lines = run_cli(["predict", bad, image, "--backend", "onnx", "--out", tmp_path / "out"],
                       capsys)
    assert code == EXIT_FATAL
    assert lines == [f"sonocad: error: {bad}: its meta transform.input_size 3072 is over the "
                     f"limit of {MAX_INPUT_SIDE} pixels a side"]
