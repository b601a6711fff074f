"""Drawing for people: outline overlays and probability heatmaps on the original image.

Float arithmetic runs over blocks of rows (`_BLOCK_PIXELS` at a time), never over the whole
image: at the pixel budget a full-size float64 colour array alone is 0.5 GB.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from matplotlib import colormaps
from scipy import ndimage

TRUTH_COLOUR = (0, 220, 0)
PREDICTION_COLOUR = (255, 40, 40)

_BLOCK_PIXELS = 1 << 18  # the float temporaries of a block take about 20 MB


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any image from `read_image` as uint8 RGB for display (16-bit scaled by its own range).

    uint8 RGB comes back as it is, not copied."""
    if pixels.dtype != np.uint8:
        pixels = _stretch_to_uint8(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3])


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """The boundary band of a bool mask, `width` pixels wide, inside the mask."""
    eroded = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    return mask & ~eroded


def draw_outlines(pixels: np.ndarray, masks: list[tuple[np.ndarray, tuple[int, int, int]]],
                  width: int | None = None) -> np.ndarray:
    """Outlines (not filled blobs) of each mask in its colour, so the tissue stays visible."""
    canvas = _canvas(pixels)
    width = width or max(1, round(max(canvas.shape[:2]) / 300))
    for mask, colour in masks:
        canvas[outline(mask, width)] = colour
    return canvas


def heatmap(pixels: np.ndarray, probability: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] probability map (colour map 'jet') over the image, stronger where higher."""
    canvas = _canvas(pixels)
    for rows in _row_blocks(*canvas.shape[:2]):
        canvas[rows] = _blend(canvas[rows], probability[rows], alpha)
    return canvas


def _blend(base: np.ndarray, probability: np.ndarray, alpha: float) -> np.ndarray:
    colours = colormaps["jet"](np.clip(probability, 0, 1))[:, :, :3] * 255
    weight = alpha * np.clip(probability, 0.15, 1.0)[:, :, None]
    return (base.astype(np.float32) * (1 - weight) + colours * weight).round().astype(np.uint8)


def _canvas(pixels: np.ndarray) -> np.ndarray:
    """`to_rgb8(pixels)` to draw on: copied only when it is the caller's own array."""
    canvas = to_rgb8(pixels)
    return canvas.copy() if np.shares_memory(canvas, pixels) else canvas


def _stretch_to_uint8(pixels: np.ndarray) -> np.ndarray:
    low, high = float(pixels.min()), float(pixels.max())
    span = max(high - low, 1e-6)
    out = np.empty(pixels.shape, np.uint8)
    for rows in _row_blocks(*pixels.shape[:2]):
        block = pixels[rows].astype(np.float32)
        out[rows] = ((block - low) / span * 255).round().astype(np.uint8)
    return out


def _row_blocks(height: int, width: int) -> Iterator[slice]:
    step = max(1, _BLOCK_PIXELS // max(width, 1))
    for top in range(0, height, step):
        yield slice(top, top + step)
