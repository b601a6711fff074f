"""Drawing for people: outline overlays and probability heatmaps on the original image.

Float arithmetic runs over blocks of rows (`_BLOCK_PIXELS` at a time), never over the whole
image: at the pixel budget a full-size float64 colour array alone is 0.5 GB.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
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


def colour_map_blend(pixels: np.ndarray, values: np.ndarray, colour_map: str = "inferno",
                     max_alpha: float = 0.75) -> np.ndarray:
    """Blend [0, 1] `values` in `colour_map` over the image with alpha `max_alpha * value`, so
    tissue under low values stays visible. Values are read at 256 levels, through tables."""
    canvas = _canvas(pixels)
    # Integers and a table of colour x alpha per level (np.take, faster than indexing): three
    # times faster than blending in floats.
    alpha = np.round(np.linspace(0, max_alpha, 256) * 255).astype(np.uint16)
    tinted = colour_table(colour_map).astype(np.uint16) * alpha[:, None] + 127  # + 127: rounds
    kept = 255 - alpha
    for rows in _row_blocks(*canvas.shape[:2]):
        level = (np.clip(values[rows], 0, 1) * 255 + 0.5).astype(np.uint8)
        mixed = canvas[rows] * np.take(kept, level)[:, :, None]
        mixed += np.take(tinted, level, axis=0)
        canvas[rows] = mixed // 255
    return canvas


@lru_cache(maxsize=4)
def colour_table(colour_map: str) -> np.ndarray:
    """The colour map's 256 colours, uint8 (256, 3): looked up, no matplotlib call per image."""
    from matplotlib import colormaps  # a third of a second: only pictures with heat need it

    levels = np.linspace(0, 1, 256)
    table = (colormaps[colour_map](levels)[:, :3] * 255).round().astype(np.uint8)
    table.flags.writeable = False  # shared by every caller through the cache
    return table


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
