"""Drawing for people: outline overlays and probability heatmaps on the original image."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from scipy import ndimage

TRUTH_COLOUR = (0, 220, 0)
PREDICTION_COLOUR = (255, 40, 40)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """Any image from `read_image` as uint8 RGB for display (16-bit scaled by its own range)."""
    if pixels.dtype != np.uint8:
        scaled = pixels.astype(np.float32)
        low, high = float(scaled.min()), float(scaled.max())
        pixels = ((scaled - low) / max(high - low, 1e-6) * 255).round().astype(np.uint8)
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
    canvas = to_rgb8(pixels).copy()
    width = width or max(1, round(max(canvas.shape[:2]) / 300))
    for mask, colour in masks:
        canvas[outline(mask, width)] = colour
    return canvas


def heatmap(pixels: np.ndarray, probability: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] probability map (colour map 'jet') over the image, stronger where higher."""
    base = to_rgb8(pixels).astype(np.float32)
    colours = colormaps["jet"](np.clip(probability, 0, 1))[:, :, :3] * 255
    weight = alpha * np.clip(probability, 0.15, 1.0)[:, :, None]
    return (base * (1 - weight) + colours * weight).round().astype(np.uint8)
