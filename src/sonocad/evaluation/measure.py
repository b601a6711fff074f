"""Lesion measurements from a mask: area and longest diameter, in pixels and in mm.

The QIMS 2023 paper is about masses under 1 cm, so the longest diameter in mm is reported
wherever the pixel spacing is known.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist


def lesion_measurements(mask: np.ndarray,
                        spacing_mm: tuple[float, float] | None = None) -> dict[str, float]:
    """area_px, area_mm2, diameter_px, diameter_mm (NaN where spacing is unknown or no lesion)."""
    area_px = float(mask.sum())
    diameter_px = _longest_diameter(mask, (1.0, 1.0))
    if spacing_mm is None:
        return {"area_px": area_px, "area_mm2": math.nan, "diameter_px": diameter_px,
                "diameter_mm": math.nan}
    return {"area_px": area_px, "area_mm2": area_px * spacing_mm[0] * spacing_mm[1],
            "diameter_px": diameter_px, "diameter_mm": _longest_diameter(mask, spacing_mm)}


def _longest_diameter(mask: np.ndarray, spacing: tuple[float, float]) -> float:
    """Largest distance between two lesion pixel centres (Feret diameter), in spacing units."""
    points = np.argwhere(mask).astype(np.float64) * np.asarray(spacing)
    if len(points) == 0:
        return math.nan
    if len(points) > 3:
        try:
            points = points[ConvexHull(points).vertices]  # the farthest pair lies on the hull
        except QhullError:  # collinear pixels: every point may matter, and there are few
            pass
    return float(pdist(points).max()) if len(points) > 1 else 0.0
