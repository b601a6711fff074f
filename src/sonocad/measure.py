"""Lesion measurements from a mask: area and longest diameter, in pixels and in mm.

The QIMS 2023 paper is about masses under 1 cm, so the longest diameter in mm is reported
wherever the pixel spacing is known.

The longest diameter (Feret diameter) joins two vertices of the lesion's convex hull, and each
vertex is the first or last lesion pixel of its row (a pixel between two others of its row is
never one). So only those are looked at, at most 2 a row: a whole-image lesion of 4096 x 4096
costs a few arrays of 4096 numbers, not 16 million pixel coordinates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist


@dataclass(frozen=True)
class Diameter:
    """The longest distance between two lesion pixel centres and where it lies."""

    length_px: float  # between `start` and `end`, in pixels
    length_mm: float  # between `start` and `end`, in mm; NaN where the spacing is unknown
    start: tuple[int, int]  # (row, col) of one end
    end: tuple[int, int]  # (row, col) of the other


def lesion_measurements(mask: np.ndarray,
                        spacing_mm: tuple[float, float] | None = None) -> dict[str, float]:
    """area_px, area_mm2, diameter_px, diameter_mm (NaN where spacing is unknown or no lesion)."""
    area_px = float(mask.sum())
    in_px = longest_diameter(mask)
    diameter_px = in_px.length_px if in_px else math.nan
    if spacing_mm is None:
        return {"area_px": area_px, "area_mm2": math.nan, "diameter_px": diameter_px,
                "diameter_mm": math.nan}
    # Measured again in mm: with unequal row and column spacing the longest pair may differ.
    in_mm = longest_diameter(mask, spacing_mm)
    return {"area_px": area_px, "area_mm2": area_px * spacing_mm[0] * spacing_mm[1],
            "diameter_px": diameter_px, "diameter_mm": in_mm.length_mm if in_mm else math.nan}


def longest_diameter(mask: np.ndarray, spacing_mm: tuple[float, float] | None = None
                     ) -> Diameter | None:
    """The pair of lesion pixels farthest apart, in mm where `spacing_mm` (row, col) is given,
    else in pixels; None for an empty mask."""
    points = _row_ends(mask)
    if len(points) == 0:
        return None
    spacing = np.asarray(spacing_mm if spacing_mm is not None else (1.0, 1.0), np.float64)
    scaled = points.astype(np.float64) * spacing
    first, last, length = _farthest_pair(scaled)
    start = (int(points[first, 0]), int(points[first, 1]))
    end = (int(points[last, 0]), int(points[last, 1]))
    if spacing_mm is None:
        return Diameter(length, math.nan, start, end)
    length_px = float(pdist(points[[first, last]].astype(np.float64))[0])
    return Diameter(length_px, length, start, end)


def _farthest_pair(points: np.ndarray) -> tuple[int, int, float]:
    """Indices of the two points farthest apart, and their distance (0 for one point)."""
    candidates = _hull_vertices(points)
    if len(candidates) == 1:
        return int(candidates[0]), int(candidates[0]), 0.0
    distances = pdist(points[candidates])
    best = int(distances.argmax())
    pairs = np.triu_indices(len(candidates), 1)  # the order pdist lists the pairs in
    return (int(candidates[pairs[0][best]]), int(candidates[pairs[1][best]]),
            float(distances[best]))


def _row_ends(mask: np.ndarray) -> np.ndarray:
    """(row, col) of the first and last lesion pixel of every row that has one, int64 (n, 2),
    sorted by row then column, each point once."""
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    first = mask.argmax(axis=1)[rows]
    last = mask.shape[1] - 1 - mask[:, ::-1].argmax(axis=1)[rows]
    points = np.stack([np.repeat(rows, 2), np.stack([first, last], axis=1).ravel()], axis=1)
    duplicate = np.repeat(first == last, 2) & np.tile([False, True], len(rows))
    return points[~duplicate]


def _hull_vertices(points: np.ndarray) -> np.ndarray:
    """Indices of the points the farthest pair is among: the hull's vertices, or for collinear
    points (no hull) the two ends of the line, the first and last in row-then-column order."""
    if len(points) <= 3:
        return np.arange(len(points))
    try:
        return ConvexHull(points).vertices
    except QhullError:
        return np.array([0, len(points) - 1])
