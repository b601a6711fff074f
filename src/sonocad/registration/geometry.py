"""Needle-tract geometry: where the tissue of a biopsy core was in the pre-fire ultrasound image.

Four frames, all with x to the right and y down, so a rotation means the same on each:

- slide: pixels of the whole-slide image, as QuPath exports them;
- core: (u, v) in mm of the core as it was in the body, u along the core axis from the dyed
  end, v across it; slide mm become body mm by dividing by (1 - shrinkage);
- physical: the ultrasound image in mm (x times the column spacing, y times the row spacing),
  so that angles and lengths hold for non-square pixels;
- image: pixels of the pre-fire ultrasound image; an integer coordinate is a pixel centre.

Firing drives the notch forward from where the needle waits, so the tissue comes from the tract
that starts at the pre-fire tip and runs `length_mm` along the needle. The dyed end of the core
is taken as its deep end, the end at the fired needle's tip: core u = 0 lies at
tip + length * direction and u = length at the pre-fire tip. Slide and body are related by a
rotation and a scale, never a mirror: a section mounted face down must be flipped in QuPath.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from sonocad.registration.fields import GAUGE_DIAMETER_MM

# A pathologist's outline may run a little past the tissue edge, or past the end of the notch.
EDGE_TOLERANCE_MM = 0.1


def needle_width_mm(gauge: int) -> float:
    """The outer diameter of a `gauge` needle, which is the width of its tract."""
    try:
        return GAUGE_DIAMETER_MM[gauge]
    except KeyError:
        known = ", ".join(f"{g}G" for g in GAUGE_DIAMETER_MM)
        raise ValueError(f"unknown needle gauge {gauge}G (known: {known})") from None


@dataclass(frozen=True, eq=False)
class Tract:
    """The needle tract in the pre-fire image.

    `tip` is the pre-fire needle tip in image pixels (x, y); `direction` points from the shaft
    through the tip, in image pixels (any length; it is made a physical unit vector here);
    `spacing_mm` is (row, column) mm per pixel, as `sonocad.io.pixels.Image` keeps it.
    """

    tip: np.ndarray
    direction: np.ndarray
    length_mm: float
    width_mm: float
    spacing_mm: tuple[float, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "tip", np.asarray(self.tip, float))
        object.__setattr__(self, "direction", physical_direction(self.direction, self.spacing_mm))

    @property
    def pixel_size(self) -> np.ndarray:
        """mm per pixel along x and along y."""
        return xy_spacing(self.spacing_mm)

    @property
    def angle_deg(self) -> float:
        """The needle's physical direction in degrees, clockwise on screen from +x."""
        return math.degrees(math.atan2(self.direction[1], self.direction[0])) % 360

    @property
    def core_to_image(self) -> np.ndarray:
        """3 x 3 affine taking core (u, v) mm to image pixels (module docstring)."""
        back = -self.direction  # the core axis runs from the deep (dyed) end back to the tip
        deep_end = self.tip * self.pixel_size + self.length_mm * self.direction
        physical = np.array([[back[0], _rot90(back)[0], deep_end[0]],
                             [back[1], _rot90(back)[1], deep_end[1]],
                             [0.0, 0.0, 1.0]])
        return np.diag([*(1 / self.pixel_size), 1.0]) @ physical

    def corners(self) -> np.ndarray:
        """The tract rectangle in image pixels (4, 2): pre-fire tip side, then deep side."""
        half = self.width_mm / 2
        core = np.array([[self.length_mm, half], [self.length_mm, -half], [0, -half], [0, half]])
        return apply(self.core_to_image, core)


@dataclass(frozen=True, eq=False)
class CoreAxis:
    """The core's long axis on the slide: `dyed_end` to `far_end` in slide pixels, whose size is
    `mpp` micrometres (the slide's MPP); `shrinkage` is the fraction the tissue shrank by."""

    dyed_end: np.ndarray
    far_end: np.ndarray
    mpp: float
    shrinkage: float = 0.0

    def __post_init__(self) -> None:
        if not self.mpp > 0:
            raise ValueError(f"slide MPP must be positive, not {self.mpp}")
        if not 0 <= self.shrinkage < 1:
            raise ValueError(f"shrinkage is a fraction in [0, 1), not {self.shrinkage}")
        if self.length_px == 0:
            raise ValueError("the core axis has no length")

    @property
    def length_px(self) -> float:
        return float(np.hypot(*(np.asarray(self.far_end) - self.dyed_end)))

    @property
    def mm_per_px(self) -> float:
        """Body mm per slide pixel, shrinkage undone."""
        return self.mpp / 1000 / (1 - self.shrinkage)

    @property
    def length_mm(self) -> float:
        return self.length_px * self.mm_per_px

    @property
    def slide_to_core(self) -> np.ndarray:
        """3 x 3 affine taking slide pixels to core (u, v) mm."""
        dyed_end = np.asarray(self.dyed_end, float)
        axis = (np.asarray(self.far_end, float) - dyed_end) / self.length_px
        across = _rot90(axis)
        slide = np.array([[axis[0], axis[1], -dyed_end @ axis],
                          [across[0], across[1], -dyed_end @ across],
                          [0.0, 0.0, 1.0]])
        return np.diag([self.mm_per_px, self.mm_per_px, 1.0]) @ slide


@dataclass(frozen=True)
class CropBox:
    """A pixel rectangle [x0, x1) x [y0, y1) of an image."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def to_crop(self) -> np.ndarray:
        """3 x 3 affine taking image pixels to crop pixels."""
        return np.array([[1.0, 0.0, -self.x0], [0.0, 1.0, -self.y0], [0.0, 0.0, 1.0]])

    def take(self, pixels: np.ndarray) -> np.ndarray:
        return pixels[self.y0:self.y1, self.x0:self.x1]


def xy_spacing(spacing_mm: tuple[float, float]) -> np.ndarray:
    """mm per pixel along x and along y, from (row, column) spacing."""
    return np.array([spacing_mm[1], spacing_mm[0]], float)


def physical_direction(direction: np.ndarray, spacing_mm: tuple[float, float]) -> np.ndarray:
    """The unit vector in mm of a direction given in image pixels."""
    physical = np.asarray(direction, float) * xy_spacing(spacing_mm)
    norm = float(np.hypot(*physical))
    if not math.isfinite(norm) or norm == 0:
        raise ValueError("the needle direction has no length")
    return physical / norm


def distance_along(start: np.ndarray, point: np.ndarray, direction: np.ndarray,
                   spacing_mm: tuple[float, float]) -> float:
    """How many mm `point` lies ahead of `start` along `direction` (all in image pixels)."""
    offset = (np.asarray(point, float) - start) * xy_spacing(spacing_mm)
    return float(offset @ physical_direction(direction, spacing_mm))


def crop_box(tract: Tract, shape: tuple[int, int], margin_mm: float) -> CropBox:
    """The tract's bounding box grown by `margin_mm` on every side, within the image."""
    corners = tract.corners()
    margin = margin_mm / tract.pixel_size
    low = np.floor(corners.min(axis=0) - margin).astype(int)
    high = np.ceil(corners.max(axis=0) + margin).astype(int) + 1
    height, width = shape
    return CropBox(max(0, int(low[0])), max(0, int(low[1])), min(width, int(high[0])),
                   min(height, int(high[1])))


def tract_problem(tract: Tract, shape: tuple[int, int]) -> str | None:
    """Why the tract cannot be placed in an image of `shape` (None when it can)."""
    height, width = shape
    if not _inside(tract.tip, shape):
        return (f"needle tip ({tract.tip[0]:.1f}, {tract.tip[1]:.1f}) is outside the "
                f"{width}x{height} image")
    if not all(_inside(corner, shape) for corner in tract.corners()):
        deep = apply(tract.core_to_image, np.zeros((1, 2)))[0]
        return (f"the {tract.length_mm:.1f} mm needle tract leaves the {width}x{height} image "
                f"(its deep end is at ({deep[0]:.1f}, {deep[1]:.1f})); check the tip, the "
                "direction, the specimen length and the pixel spacing")
    return None


def outline_problem(outlines: list[np.ndarray], core: np.ndarray, length_mm: float) -> str | None:
    """Why cancer `outlines` cannot come from the `core` region in a specimen of `length_mm`
    (None when they can). All are (N, 2) arrays in core mm; a vertex may lie up to
    EDGE_TOLERANCE_MM outside."""
    region = np.asarray(core, np.float32).reshape(-1, 1, 2)
    for number, outline in enumerate(outlines, start=1):
        outside = max(-cv2.pointPolygonTest(region, (float(u), float(v)), True)
                      for u, v in outline)
        if outside > EDGE_TOLERANCE_MM:
            return (f"cancer outline {number} lies outside the core (by up to {outside:.2f} mm); "
                    "check the core outline and the dye mark")
        reach = float(outline[:, 0].max())
        if reach > length_mm + EDGE_TOLERANCE_MM:
            return (f"cancer outline {number} reaches {reach:.1f} mm from the dyed end, past the "
                    f"{length_mm:.1f} mm specimen; check the slide MPP, the shrinkage and the "
                    "specimen length")
    return None


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 3 x 3 affine."""
    points = np.asarray(points, float).reshape(-1, 2)
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def _rot90(vector: np.ndarray) -> np.ndarray:
    """`vector` turned a quarter turn (clockwise on screen, where y points down)."""
    return np.array([-vector[1], vector[0]])


def _inside(point: np.ndarray, shape: tuple[int, int]) -> bool:
    height, width = shape
    x, y = point
    return -0.5 <= x <= width - 0.5 and -0.5 <= y <= height - 0.5
