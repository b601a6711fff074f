"""Image reading through Pillow: every mode to uint8/uint16 grey or RGB, EXIF, bad input."""

from __future__ import annotations

import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageFile

from conftest import traced_peak_of_refusals
from sonocad.errors import InputError
from sonocad.io import images, pixels
from sonocad.io.images import IMAGE_SUFFIXES, is_image_file, iter_frames, read_image
from sonocad.io.pixels import MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, Image

RNG = np.random.default_rng(0)
GREY = RNG.integers(0, 256, (18, 24), dtype=np.uint8)
RGB = RNG.integers(0, 256, (18, 24, 3), dtype=np.uint8)
GREY16 = RNG.integers(0, 65536, (18, 24), dtype=np.uint16)
RGB_NOISE = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)  # compresses badly: long files


def save(path: Path, image: PILImage.Image, **options: object) -> Path:
    image.save(path, **options)
    return path


def blocks(values: np.ndarray) -> np.ndarray:
    """Each value as a 16 x 16 block: a tiny pattern at the smallest size a reader accepts."""
    return np.repeat(np.repeat(values, MIN_IMAGE_SIDE, axis=0), MIN_IMAGE_SIDE, axis=1)


def zeros_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 8-bit grey PNG, compressed a row at a time: 10000 x 10000 takes
    about 100 KB on disk and 100 MB once decoded, but never that much memory to write."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))

    compressor, row = zlib.compressobj(9), bytes(width + 1)  # filter byte 0, then the pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_grey_and_rgb_are_exact(tmp_path: Path, suffix: str) -> None:
    grey = read_image(save(tmp_path / f"g{suffix}", PILImage.fromarray(GREY)))
    assert grey.pixels.dtype == np.uint8
    np.testing.assert_array_equal(grey.pixels, GREY)
    rgb = read_image(save(tmp_path / f"c{suffix}", PILImage.fromarray(RGB)))
    np.testing.assert_array_equal(rgb.pixels, RGB)


def test_jpeg_grey_and_rgb_keep_their_shape(tmp_path: Path) -> None:
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (16, 1))
    grey = read_image(save(tmp_path / "g.jpg", PILImage.fromarray(smooth), quality=95))
    assert grey.pixels.shape == (16, 32) and grey.pixels.dtype == np.uint8
    assert np.abs(grey.pixels.astype(int) - smooth).max() <= 6
    colour = np.stack([smooth, 255 - smooth, smooth // 2], axis=2)
    rgb = read_image(save(tmp_path / "c.jpeg", PILImage.fromarray(colour), quality=95))
    assert rgb.pixels.shape == (16, 32, 3) and rgb.pixels.dtype == np.uint8


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_bilevel_becomes_0_and_255(tmp_path: Path, suffix: str) -> None:
    bits = GREY > 128
    pixels = read_image(save(tmp_path / f"a{suffix}", PILImage.fromarray(bits))).pixels
    assert pixels.dtype == np.uint8 and pixels.ndim == 2
    np.testing.assert_array_equal(pixels, np.where(bits, 255, 0))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_alpha_is_dropped(tmp_path: Path, suffix: str) -> None:
    alpha = np.zeros_like(GREY)  # fully transparent: colour must survive anyway
    la = PILImage.fromarray(np.stack([GREY, alpha], axis=2), mode="LA")
    np.testing.assert_array_equal(read_image(save(tmp_path / f"la{suffix}", la)).pixels, GREY)
    rgba = PILImage.fromarray(np.dstack([RGB, alpha]), mode="RGBA")
    np.testing.assert_array_equal(read_image(save(tmp_path / f"rgba{suffix}", rgba)).pixels, RGB)


def test_palette_with_grey_colours_becomes_grey(tmp_path: Path) -> None:
    palette = PILImage.frombytes("P", (GREY.shape[1], GREY.shape[0]), GREY.tobytes())
    palette.putpalette([v for level in range(256) for v in (level, level, level)])
    pixels = read_image(save(tmp_path / "p.png", palette)).pixels
    assert pixels.shape == GREY.shape
    np.testing.assert_array_equal(pixels, GREY)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_palette_with_colours_becomes_rgb(tmp_path: Path, suffix: str) -> None:
    palette = PILImage.fromarray(RGB).quantize(colors=16)
    expected = np.asarray(palette.convert("RGB"))
    pixels = read_image(save(tmp_path / f"p{suffix}", palette)).pixels
    assert pixels.shape == RGB.shape
    np.testing.assert_array_equal(pixels, expected)


def test_palette_with_alpha_becomes_rgb(tmp_path: Path) -> None:
    palette = PILImage.fromarray(RGB).quantize(colors=16).convert("PA")
    expected = np.asarray(palette.convert("RGB"))
    np.testing.assert_array_equal(read_image(save(tmp_path / "pa.tif", palette)).pixels, expected)


@pytest.mark.parametrize("suffix,mode", [(".jpg", "CMYK"), (".tif", "CMYK"), (".tif", "YCbCr")])
def test_cmyk_and_ycbcr_become_rgb(tmp_path: Path, suffix: str, mode: str) -> None:
    original = PILImage.fromarray(RGB).convert(mode)
    path = save(tmp_path / f"a{suffix}", original, quality=100)
    with PILImage.open(path) as opened:
        assert opened.mode == mode  # the branch under test, not Pillow converting on save
    pixels = read_image(path).pixels
    assert pixels.shape == RGB.shape and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - np.asarray(original.convert("RGB"))).mean() < 8


@pytest.mark.parametrize("suffix,mode", [(".png", "I;16"), (".tif", "I;16"), (".tif", "I;16B")])
def test_16bit_grey_is_uint16_exactly(tmp_path: Path, suffix: str, mode: str) -> None:
    image = PILImage.fromarray(GREY16)
    if mode == "I;16B":
        image = PILImage.frombytes("I;16B", image.size, GREY16.astype(">u2").tobytes())
    path = save(tmp_path / f"a{suffix}", image)
    with PILImage.open(path) as opened:
        assert opened.mode == mode
    pixels = read_image(path).pixels
    assert pixels.dtype == np.uint16 and pixels.shape == GREY16.shape
    np.testing.assert_array_equal(pixels, GREY16)


@pytest.mark.parametrize("bits", [8, 10, 12, 14])
def test_16bit_png_holding_fewer_bits_is_widened_to_the_full_range(tmp_path: Path,
                                                                   bits: int) -> None:
    """A 12-bit scan exported as a 16-bit PNG must not reach the model 16 x too dark."""
    top = 2**bits - 1
    values = (GREY16.astype(np.uint32) * top // 65535).astype(np.uint16)
    values[0, 0] = top  # the brightest pixel uses the last bit, as a real scan's does
    pixels = read_image(save(tmp_path / "a.png", PILImage.fromarray(values))).pixels
    assert pixels.dtype == np.uint16 and pixels.max() == 65535
    np.testing.assert_allclose(pixels / 65535, values / top, atol=0.5 / 65535 + 1e-12)


def test_int32_within_16_bits_is_kept_and_beyond_is_stretched(tmp_path: Path) -> None:
    kept = read_image(save(tmp_path / "a.tif", PILImage.fromarray(GREY16.astype(np.int32))))
    assert kept.pixels.dtype == np.uint16
    np.testing.assert_array_equal(kept.pixels, GREY16)
    wide = blocks(np.array([[-70000, 0], [70000, 140000]], np.int32))
    stretched = read_image(save(tmp_path / "b.tif", PILImage.fromarray(wide))).pixels
    np.testing.assert_array_equal(stretched, blocks(np.array([[0, 21845], [43690, 65535]])))


def test_float_is_stretched_unless_whole_numbers(tmp_path: Path) -> None:
    fractions = blocks(np.array([[0.0, 0.25], [0.5, 1.0]], np.float32))
    pixels = read_image(save(tmp_path / "a.tif", PILImage.fromarray(fractions))).pixels
    assert pixels.dtype == np.uint16
    np.testing.assert_array_equal(pixels, blocks(np.array([[0, 16384], [32768, 65535]])))
    whole = blocks(np.array([[3.0, 7.0], [1000.0, 2.0]], np.float32))
    kept = read_image(save(tmp_path / "b.tif", PILImage.fromarray(whole))).pixels
    np.testing.assert_array_equal(kept, whole.astype(np.uint16))
    constant = read_image(save(tmp_path / "c.tif", PILImage.fromarray(fractions * 0 + 0.5))).pixels
    assert (constant == 0).all()


def test_float_with_nan_is_an_input_error(tmp_path: Path) -> None:
    values = blocks(np.array([[0.0, np.nan]], np.float32))
    with pytest.raises(InputError, match="NaN"):
        read_image(save(tmp_path / "a.tif", PILImage.fromarray(values)))


def test_unsupported_mode_is_an_input_error(tmp_path: Path) -> None:
    path = save(tmp_path / "a.tif", PILImage.new("LAB", (16, 16)))
    with pytest.raises(InputError, match="unsupported image mode 'LAB'"):
        read_image(path)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((20, 40), np.uint8)
    stored[:, :10] = 255  # a bright stripe on the left as stored
    exif = PILImage.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path / "a.jpg", PILImage.fromarray(stored), exif=exif.tobytes(), quality=95)
    pixels = read_image(path).pixels
    assert pixels.shape == (40, 20)
    assert pixels[:8].mean() > 240 and pixels[12:].mean() < 15  # the stripe is now on top


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "P"])
def test_pixels_are_writable(tmp_path: Path, mode: str) -> None:
    path = save(tmp_path / "a.png", PILImage.new(mode, (16, 16)))
    assert read_image(path).pixels.flags.writeable  # callers may edit in place


def test_iter_frames_of_an_ordinary_image_yields_it_once(tmp_path: Path) -> None:
    frames = list(iter_frames(save(tmp_path / "a.png", PILImage.fromarray(GREY))))
    assert len(frames) == 1
    np.testing.assert_array_equal(frames[0].pixels, GREY)


def test_image_record() -> None:
    image = Image(GREY)
    assert (image.shape, image.height, image.width, image.spacing_mm) == ((18, 24), 18, 24, None)
    calibrated = image.with_spacing((0.1, 0.2))
    assert calibrated.spacing_mm == (0.1, 0.2) and image.spacing_mm is None
    assert calibrated.pixels is image.pixels
    assert Image(RGB).shape == (18, 24)
    with pytest.raises(ValueError, match="uint8 or uint16"):
        Image(GREY.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, 3\)"):
        Image(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="positive"):
        image.with_spacing((0.1, 0.0))


def test_suffixes_and_is_image_file(tmp_path: Path) -> None:
    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}
    png = save(tmp_path / "UPPER.PNG", PILImage.fromarray(GREY))
    assert is_image_file(png)
    assert not is_image_file(tmp_path / "missing.png")
    assert not is_image_file(tmp_path)


# --- bad input: always InputError, one line, naming the file -------------------------------

def assert_input_error(path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match) as caught:
        read_image(path)
    assert caught.value.path == path
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    assert_input_error(tmp_path / "absent.png", "file not found")


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert_input_error(folder, "not a regular file")


def test_zero_byte_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.touch()
    assert_input_error(empty, "file is empty")


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_png(tmp_path: Path, keep: float) -> None:
    data = save(tmp_path / "good.png", PILImage.fromarray(RGB_NOISE)).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: int(len(data) * keep)])
    assert_input_error(cut, "cannot read image")


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = save(tmp_path / "good.jpg", PILImage.fromarray(RGB_NOISE), quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_input_error(cut, "cannot read image")


def test_text_named_png(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    assert_input_error(text, "not a PNG, JPEG, BMP, TIFF or DICOM image")


def test_unsupported_format(tmp_path: Path) -> None:
    gif = save(tmp_path / "a.gif", PILImage.fromarray(GREY))
    assert_input_error(gif, "not a PNG, JPEG, BMP, TIFF or DICOM image")


def test_pillow_bomb_error_and_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "big.png", PILImage.fromarray(GREY))  # 432 pixels
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 300)  # warns above 300, fails above 600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(path)  # Pillow's warning is silenced: our own limit decides
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50)
    assert_input_error(path, r"image too large \(over 100 pixels; the limit is 16,777,216 "
                             r"pixels per image or frame\)")


# --- the pixel budget, checked from the header before decoding ------------------------------

def test_the_limits_are_the_documented_ones() -> None:
    assert MAX_IMAGE_PIXELS == 4096 * 4096 and MIN_IMAGE_SIDE == 16


def test_a_97_kb_10000_x_10000_png_is_refused_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = zeros_png(tmp_path / "bomb.png", 10_000, 10_000)
    assert bomb.stat().st_size < 200_000

    def never(self: object) -> None:
        raise AssertionError("decoded an image over the pixel budget")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    peak = traced_peak_of_refusals(bomb, "10000 x 10000")
    assert peak < 2_000_000  # decoding would take 100 MB


def test_the_budget_is_inclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path / "a.png", PILImage.fromarray(GREY))  # 24 x 18 = 432 pixels
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 432)
    assert read_image(path).shape == (18, 24)
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 431)
    assert_input_error(path, r"image too large \(24 x 18 pixels; the limit is 431 pixels per "
                             r"image or frame\)")


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_every_pillow_format_is_checked_before_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    path = save(tmp_path / f"a{suffix}", PILImage.fromarray(RGB))
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 100)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded"))
    assert_input_error(path, r"image too large \(24 x 18 pixels")


@pytest.mark.parametrize("size", [(1, 1), (5000, 3), (3, 5000), (15, 200)])
def test_images_too_small_for_a_scan_are_refused(tmp_path: Path, size: tuple[int, int]) -> None:
    path = save(tmp_path / "tiny.png", PILImage.new("L", size))
    assert_input_error(path, rf"image too small for an ultrasound frame \({size[0]} x {size[1]} "
                             r"pixels; each side must be at least 16\)")
    with pytest.raises(InputError, match="too small"):
        iter_frames(path)


def test_the_smallest_accepted_image(tmp_path: Path) -> None:
    path = save(tmp_path / "a.png", PILImage.new("L", (16, 5000)))
    assert read_image(path).shape == (5000, 16)


# --- multi-page TIFF: every page a frame, decoded one at a time ------------------------------

def pages(path: Path, frames: list[PILImage.Image]) -> Path:
    frames[0].save(path, save_all=True, append_images=frames[1:])
    return path


def test_every_tiff_page_is_a_frame_and_read_image_takes_the_first(tmp_path: Path) -> None:
    path = pages(tmp_path / "stack.tif", [PILImage.fromarray(GREY), PILImage.fromarray(RGB),
                                          PILImage.fromarray(255 - GREY[:16, :20])])
    frames = [frame.pixels for frame in iter_frames(path)]
    assert len(frames) == 3
    np.testing.assert_array_equal(frames[0], GREY)
    np.testing.assert_array_equal(frames[1], RGB)
    np.testing.assert_array_equal(frames[2], 255 - GREY[:16, :20])
    np.testing.assert_array_equal(read_image(path).pixels, GREY)


def test_a_tiff_page_over_the_budget_refuses_the_file_on_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = pages(tmp_path / "stack.tif", [PILImage.fromarray(GREY[:16, :16]),
                                          PILImage.fromarray(GREY)])
    monkeypatch.setattr(pixels, "MAX_IMAGE_PIXELS", 16 * 16)
    np.testing.assert_array_equal(read_image(path).pixels, GREY[:16, :16])  # its page fits
    with pytest.raises(InputError, match=r"image too large \(24 x 18 pixels"):
        iter_frames(path)  # before a single page is decoded


def test_tiff_pages_are_decoded_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Decoding alone: each frame's scan-area estimate has a working set of its own, a few bytes
    # a pixel, freed before the next frame is read (tests/test_scan_area.py).
    monkeypatch.setattr(images, "estimate_scan_area", lambda pixels: None)
    noise = RNG.integers(0, 256, (30, 256, 256), dtype=np.uint8)
    path = pages(tmp_path / "cine.tif", [PILImage.fromarray(page) for page in noise])
    tracemalloc.start()
    try:
        frames = iter_frames(path)
        assert tracemalloc.get_traced_memory()[1] < noise[0].nbytes  # nothing decoded yet
        count = sum(1 for _ in frames)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 30
    assert peak < 5 * noise[0].nbytes  # a few pages at a time, not all 30


# --- one-line messages ----------------------------------------------------------------------

def test_messages_with_newlines_become_one_line() -> None:
    error = InputError("scan.png", "cannot decode:\n  line two\r\n\tline three\x1b[31m")
    assert str(error) == r"scan.png: cannot decode: line two line three\x1b[31m"
    assert error.problem == r"cannot decode: line two line three\x1b[31m"


def test_a_newline_in_the_file_name_is_escaped(tmp_path: Path) -> None:
    path = tmp_path / "evil\nname.png"
    with pytest.raises(InputError) as caught:
        read_image(path)
    message = str(caught.value)
    assert "\n" not in message and caught.value.path == path
    assert message == f"{str(path)!r}: file not found"


# --- real data ------------------------------------------------------------------------------

@pytest.mark.busi
@pytest.mark.parametrize("name,shape_len", [
    ("benign/benign (1).png", 2), ("malignant/malignant (1).png", 2), ("normal/normal (1).png", 2),
    ("benign/benign (13).png", 3), ("malignant/malignant (65).png", 3),
])
def test_busi_images(busi_root: Path, name: str, shape_len: int) -> None:
    image = read_image(busi_root / name)
    assert image.pixels.dtype == np.uint8
    assert image.pixels.ndim == shape_len
    assert 300 <= image.height <= 720 and 190 <= image.width <= 1048
    if shape_len == 3:
        assert image.pixels.shape[2] == 3
        assert not np.array_equal(image.pixels[..., 0], image.pixels[..., 1])
