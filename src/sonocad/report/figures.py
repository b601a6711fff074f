"""Figures for the report, rendered in memory and inlined as PNG data URIs.

Charts (`sonocad.report.charts`) are rendered at `DPI`, print resolution at their printed
width. Raster images (overlays, heatmaps) are shrunk to a display size first: a report of
several runs stays a few megabytes, not hundreds.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image as PILImage

from sonocad.errors import InputError

MAX_SIDE = 420  # pixels, the longest side of an inlined raster image
DPI = 200  # a chart's pixels per inch: print resolution at its printed width


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(figure: Figure, dpi: int = DPI) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return png_uri(buffer.getvalue())


def image_uri(pixels: np.ndarray, max_side: int = MAX_SIDE) -> str:
    """A uint8 image array (grey or RGB), shrunk to `max_side`, as a PNG data URI."""
    image = PILImage.fromarray(pixels)
    image.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return png_uri(buffer.getvalue())


def file_uri(path: Path, max_side: int | None = None) -> str:
    """A PNG file written by `sonocad evaluate`, as it is or shrunk to `max_side`."""
    try:
        if max_side is None:
            return png_uri(path.read_bytes())
        with PILImage.open(path) as image:
            return image_uri(np.asarray(image.convert("RGB")), max_side)
    except (OSError, PILImage.UnidentifiedImageError) as exc:
        raise InputError(path, f"unreadable figure ({exc})") from None


def side_by_side(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """RGB uint8 images of one height, left to right with white gaps (image | heatmap)."""
    height = images[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = [part for image in images for part in (spacer, image)][1:]
    return np.concatenate(parts, axis=1)
