"""Lesion measurements from a mask: area and longest diameter, in pixels and in mm, and each
lesion of a probability map on its own (`find_lesions`).

The QIMS 2023 paper is about masses under 1 cm, so the longest diameter in mm is reported
wherever the pixel spacing is known.

The longest diameter (Feret diameter) joins two vertices of the lesion's convex hull, and each
vertex is the first or last lesion pixel of its row (a pixel between two others of its row is
never one). So only those are looked at, at most 2 a row: a whole-image lesion of 4096 x 4096
costs a few arrays of 4096 numbers, not 16 million pixel coordinates.

A lesion is a connected region (8-neighbours) of the map at the threshold; regions under
`MIN_LESION_PX` pixels (or `MIN_LESION_MM2` where the spacing is known) are specks, not lesions
(chosen on validation images: benchmarks/lesion_min_size.py, docs/measurements.md). Each lesion
gets the two diameters a report uses: the longest, and the longest chord perpendicular to it
(`perpendicular_diameter`). The main lesion, first in the list, holds the most probability
(its area times its mean probability): a large faint region does not outrank a clear lesion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist


@dataclass(frozen=True)
class Diameter:
    """The longest distance between two lesion pixel centres and where it lies."""

    length_px: float  # between `start` and `end`, in pixels
    length_mm: float  # between `start` and `end`, in mm; NaN where the spacing is unknown
    start: tuple[int, int]  # (row, col) of one end
    end: tuple[int, int]  # (row, col) of the other

    def shifted(self, rows: int, cols: int) -> Diameter:
        return Diameter(self.length_px, self.length_mm, (self.start[0] + rows,
                                                         self.start[1] + cols),
                        (self.end[0] + rows, self.end[1] + cols))


THRESHOLD = 0.5  # lesion probability from which a pixel is lesion
MIN_LESION_PX = 50  # benchmarks/lesion_min_size.py and docs/measurements.md
MIN_LESION_MM2 = 1.0  # a clinical floor (docs/measurements.md): no data set here has spacing


@dataclass(frozen=True)
class Lesion:
    """One lesion: a connected region of the thresholded probability map."""

    number: int  # 1 = the main lesion
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the image's pixels
    mask: np.ndarray  # bool, the box's crop of the image
    area_px: int
    area_mm2: float  # NaN where the spacing is unknown
    diameter: Diameter  # the longest, in image coordinates
    perpendicular: Diameter | None  # the longest chord perpendicular to it
    mean_probability: float
    region: int | None = None  # the image's calibrated region it lies in (1-based), if any

    def shifted(self, rows: int, cols: int) -> Lesion:
        """The same lesion in a frame `rows` lower and `cols` further right (a region's crop
        into its image)."""
        x0, y0, x1, y1 = self.box
        return replace(self, box=(x0 + cols, y0 + rows, x1 + cols, y1 + rows),
                       diameter=self.diameter.shifted(rows, cols),
                       perpendicular=self.perpendicular and self.perpendicular.shifted(rows, cols))

    def record(self) -> dict[str, object]:
        """JSON-ready figures (the predictions table's ``lesions`` column)."""
        def number(value: float, digits: int = 2) -> float | None:
            return None if math.isnan(value) else round(value, digits)

        cross = self.perpendicular
        return {"number": self.number, "area_px": self.area_px,
                "area_mm2": number(self.area_mm2),
                "diameter_px": number(self.diameter.length_px, 1),
                "diameter_mm": number(self.diameter.length_mm),
                "perpendicular_px": number(cross.length_px, 1) if cross else 0.0,
                "perpendicular_mm": number(cross.length_mm) if cross else None,
                "box": list(self.box), "mean_probability": round(self.mean_probability, 4),
                **({} if self.region is None else {"region": self.region})}


def find_lesions(probability: np.ndarray, spacing_mm: tuple[float, float] | None = None, *,
                 threshold: float = THRESHOLD, min_px: int | None = None,
                 min_mm2: float | None = None) -> list[Lesion]:
    """The lesions of a probability map (float, H x W), main first; specks dropped (below
    `min_px` pixels, or `min_mm2` where `spacing_mm` (row, col) is known)."""
    min_px = MIN_LESION_PX if min_px is None else min_px
    min_mm2 = MIN_LESION_MM2 if min_mm2 is None else min_mm2
    labels, count = ndimage.label(probability > threshold, structure=np.ones((3, 3), bool))
    found = []
    for index, window in enumerate(ndimage.find_objects(labels), start=1):
        mask = labels[window] == index
        area = int(mask.sum())
        area_mm2 = area * spacing_mm[0] * spacing_mm[1] if spacing_mm else math.nan
        if (area_mm2 < min_mm2) if spacing_mm else (area < min_px):
            continue
        found.append((float(probability[window][mask].sum()), window, mask, area, area_mm2))
    found.sort(key=lambda item: -item[0])
    lesions = []
    for number, (mass, window, mask, area, area_mm2) in enumerate(found, start=1):
        top, left = window[0].start, window[1].start
        longest = longest_diameter(mask, spacing_mm)
        cross = perpendicular_diameter(mask, longest, spacing_mm)
        lesions.append(Lesion(
            number, (left, top, window[1].stop, window[0].stop), mask, area, area_mm2,
            longest.shifted(top, left), cross.shifted(top, left) if cross else None,
            mass / area))
    return lesions

def regional_lesions(probability: np.ndarray,
                     regions: Sequence[tuple[tuple[int, int, int, int],
                                             tuple[float, float] | None]],
                     **floors: float) -> list[Lesion]:
    """The lesions of each region (box x0, y0, x1, y1 and its spacing) found in its own crop
    with its own spacing, so that none spans two regions; numbered together, main first."""
    found = []
    for index, ((x0, y0, x1, y1), spacing) in enumerate(regions, start=1):
        found += [replace(lesion.shifted(y0, x0), region=index)
                  for lesion in find_lesions(probability[y0:y1, x0:x1], spacing, **floors)]
    found.sort(key=lambda lesion: -lesion.mean_probability * lesion.area_px)
    return [replace(lesion, number=number) for number, lesion in enumerate(found, start=1)]


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


def perpendicular_diameter(mask: np.ndarray, longest: Diameter,
                           spacing_mm: tuple[float, float] | None = None) -> Diameter | None:
    """The longest chord of `mask` perpendicular to `longest` (its own longest diameter, in the
    same coordinates): the lesion's width across its long axis. Measured between boundary
    pixels (memory grows with the outline, not the area), in strips one pixel wide along the
    axis, so to within a pixel where the axis is oblique; None for a lesion of one pixel."""
    spacing = np.asarray(spacing_mm if spacing_mm is not None else (1.0, 1.0), np.float64)
    axis = (np.subtract(longest.end, longest.start)) * spacing
    if not axis.any():
        return None
    along = axis / np.linalg.norm(axis)
    across = np.array([-along[1], along[0]])
    padded = np.pad(np.asarray(mask, bool), 1)
    edge = padded & ~ndimage.binary_erosion(padded)
    points = np.argwhere(edge[1:-1, 1:-1])
    scaled = points * spacing
    strips = np.round(scaled @ along / spacing.max()).astype(np.int64)  # a pixel wide
    width = scaled @ across
    order = np.lexsort((width, strips))  # by strip, then across the axis
    strips, width, points = strips[order], width[order], points[order]
    starts = np.flatnonzero(np.r_[True, strips[1:] != strips[:-1]])
    ends = np.r_[starts[1:], len(strips)] - 1
    best = int(np.argmax(width[ends] - width[starts]))
    first, last = points[starts[best]], points[ends[best]]
    length = float(width[ends[best]] - width[starts[best]])
    start, end = (int(first[0]), int(first[1])), (int(last[0]), int(last[1]))
    if spacing_mm is None:
        return Diameter(length, math.nan, start, end)
    return Diameter(float(np.hypot(*(last - first))), length, start, end)


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
