"""The decoded image every reader returns, and the pixel rules every reader shares: the size
and frame-count limits checked from a file's header, and how narrow or float values become
uint8 / uint16."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sonocad.errors import InputError

# Larger images (or frames) are refused from their header, before decoding: a 97 KB PNG can
# expand to 10000 x 10000. The figure is set by memory: `sonocad predict` with every output
# peaks at 1.6 GiB on an RGB image of this size, lesion everywhere (0.8 GiB of it is torch and
# the model; docs/benchmarks.md, benchmarks/peak_memory.py), so one input stays under 2 GB.
# Scanners make nothing near it: a 4K screen capture (3840 x 2160) is half. A pixel is one
# position, grey or colour alike.
MAX_IMAGE_PIXELS = 4096 * 4096
# Smaller sides are refused: no ultrasound frame is that small (BUSI's smallest side is 190 px),
# and a 1 x 1 image or a 5000 x 3 strip would be classified as if it were a scan.
MIN_IMAGE_SIDE = 16
# More frames in one file (a cine loop, a multi-page TIFF) are refused from the header, before
# any frame is used: `predict` predicts and writes every frame, and an 11 MB TIFF can hold
# 100,000 pages. A minute of cine at 30 frames/s is 1,800.
MAX_FRAMES = 10_000


@dataclass(frozen=True)
class Region:
    """A part of the image analysed on its own: one view of a dual view, the tissue window of a
    screen, as the scanner calibrated it (DICOM SequenceOfUltrasoundRegions, 2-D tissue
    regions), or the scan area of a screen capture, estimated from its pixels
    (`sonocad.io.scan_area`)."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), inside the image
    spacing_mm: tuple[float, float] | None  # (row, column) mm per pixel in this region
    estimated: bool = False  # found from the pixels, not named by the file


@dataclass(frozen=True, eq=False)
class Image:
    """Pixels as read, plus the physical size of a pixel where the file or manifest says it,
    and the regions analysed on their own (`sonocad.inference.predictor.Predictor.
    predict_images`): the scanner's calibrated tissue regions where the file names them, or
    a screen capture's estimated scan area (`sonocad.io.images.iter_frames`)."""

    pixels: np.ndarray  # (H, W) grey or (H, W, 3) RGB; uint8 or uint16
    spacing_mm: tuple[float, float] | None = None  # (row, column) mm per pixel
    regions: tuple[Region, ...] = ()

    def __post_init__(self) -> None:
        if self.pixels.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"image pixels must be uint8 or uint16, not {self.pixels.dtype}")
        if not (self.pixels.ndim == 2 or (self.pixels.ndim == 3 and self.pixels.shape[2] == 3)):
            raise ValueError(f"image pixels must be (H, W) or (H, W, 3), not {self.pixels.shape}")
        if self.spacing_mm is not None:
            spacing = tuple(float(value) for value in self.spacing_mm)
            if len(spacing) != 2 or not all(np.isfinite(v) and v > 0 for v in spacing):
                raise ValueError(
                    f"pixel spacing must be two positive numbers, not {self.spacing_mm}")
            object.__setattr__(self, "spacing_mm", spacing)

    def with_spacing(self, spacing_mm: tuple[float, float] | None) -> Image:
        return replace(self, spacing_mm=spacing_mm)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return self.pixels.shape[0], self.pixels.shape[1]

    @property
    def height(self) -> int:
        return self.pixels.shape[0]

    @property
    def width(self) -> int:
        return self.pixels.shape[1]


def check_size(path: Path, width: int, height: int, *, smallest: int = MIN_IMAGE_SIDE) -> None:
    """InputError for an image or frame over `MAX_IMAGE_PIXELS` or with a side under
    `smallest`. Readers call it with the header's sizes, before decoding."""
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(path, f"image too large ({width} x {height} pixels; the limit is "
                               f"{MAX_IMAGE_PIXELS:,} pixels per image or frame)")
    if min(width, height) < smallest:
        raise InputError(path, f"image too small for an ultrasound frame ({width} x {height} "
                               f"pixels; each side must be at least {smallest})")


def check_frame_count(path: Path, count: int) -> None:
    """InputError for a file with more than `MAX_FRAMES` frames or pages (`count` may stop
    counting at one past the limit)."""
    if count > MAX_FRAMES:
        raise InputError(path, f"too many frames (more than the limit of {MAX_FRAMES:,} frames "
                               "or pages per file)")


SIGNIFICANT_BITS = (8, 10, 12, 14, 16)


def significant_bits(pixels: np.ndarray) -> int:
    """The fewest of `SIGNIFICANT_BITS` that hold the largest value."""
    peak = int(pixels.max()) if pixels.size else 0
    return next(bits for bits in SIGNIFICANT_BITS if peak < 2**bits)


def widen_to_16_bits(pixels: np.ndarray, bits: int) -> np.ndarray:
    """`bits`-bit values held in uint16, scaled onto 0..65535 (4095 -> 65535 for 12 bits), so
    every 16-bit container reaches the model at the brightness it was recorded with."""
    if bits >= 16:
        return pixels
    top = 2**bits - 1
    wide = pixels.astype(np.uint32)  # worked in place: one 32-bit copy, not four
    wide *= 65535
    wide += top // 2
    wide //= top
    return wide.astype(np.uint16)


def stretch_to_dtype(values: np.ndarray, dtype: type[np.unsignedinteger]) -> np.ndarray:
    """`values` mapped linearly from their min..max onto the full range of `dtype`.

    A constant image becomes all zeros.
    """
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(values.shape, dtype)
    scaled = values.astype(np.float64)  # worked in place: one float copy, not three
    scaled -= low
    scaled *= np.iinfo(dtype).max / (high - low)
    return np.rint(scaled, out=scaled).astype(dtype)
