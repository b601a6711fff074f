"""The files a registration reads: the pre-fire image, the needle marked in Labelme, the fired
tip, and the core drawn in QuPath."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sonocad.errors import InputError
from sonocad.io.annotations import (
    GeoAnnotation,
    GeoPolygon,
    LabelmeFile,
    read_labelme,
    read_qupath_geojson,
)
from sonocad.io.images import read_image
from sonocad.io.pixels import Image
from sonocad.registration.fields import DEFAULT_LENGTH_MM, Biopsy
from sonocad.registration.geometry import distance_along

TIP_LABEL, NEEDLE_LABEL = "tip", "needle"  # Labelme labels
CORE_LABEL, DYE_LABEL = "core", "dye"  # QuPath names or classifications


@dataclass(frozen=True, eq=False)
class Needle:
    """The pre-fire needle in image pixels; `source` is the file that marked it."""

    tip: np.ndarray
    direction: np.ndarray  # from the shaft through the tip, any length
    source: Path


@dataclass(frozen=True, eq=False)
class CoreAnnotation:
    """The core as drawn on the slide, in slide pixels."""

    path: Path
    dyed_end: np.ndarray
    far_end: np.ndarray
    outline: np.ndarray | None  # None when the core was drawn as its axis only
    cancer: tuple[GeoPolygon, ...]
    other_classes: tuple[str, ...]  # of polygons left out: a misspelt cancer class shows here


# --- files -------------------------------------------------------------------------------------


def read_ultrasound(biopsy: Biopsy) -> Image:
    """The pre-fire image with its pixel spacing: as given, else from the file."""
    image = read_image(biopsy.image)
    if biopsy.spacing_mm is not None:
        return image.with_spacing(biopsy.spacing_mm)
    if image.spacing_mm is None:
        raise InputError(biopsy.image, "no pixel spacing in the file; give spacing (mm per "
                                       "pixel)")
    return image


def read_needle(biopsy: Biopsy) -> Needle:
    """The needle tip and direction: from the Labelme marks, else from tip and angle."""
    if biopsy.labelme is None:
        assert biopsy.tip is not None and biopsy.angle_deg is not None  # parse_biopsy checks
        angle = math.radians(biopsy.angle_deg)
        return Needle(np.array(biopsy.tip, float), np.array([math.cos(angle), math.sin(angle)]),
                      biopsy.image)
    marks = read_labelme(biopsy.labelme)
    tip = _tip(marks)
    shaft = np.concatenate([s.points for s in marks.shapes if s.label == NEEDLE_LABEL]
                           or [np.empty((0, 2))])
    if len(shaft) == 0:
        raise InputError(marks.path, f"no {NEEDLE_LABEL!r} point or line along the needle shaft "
                                     "(it gives the needle direction)")
    # The mark farthest from the tip, so that a line drawn either way round points the same.
    behind = shaft[np.argmax(np.hypot(*(shaft - tip).T))]
    if np.allclose(behind, tip):
        raise InputError(marks.path, f"the {NEEDLE_LABEL!r} mark lies on the tip; put it on the "
                                     "shaft behind the tip")
    return Needle(tip, tip - behind, marks.path)


def specimen_length(biopsy: Biopsy, needle: Needle,
                    spacing_mm: tuple[float, float]) -> tuple[float, str]:
    """The specimen length in mm and where it came from: given, measured from the fired tip
    (its distance ahead of the pre-fire tip along the needle), or the 16G notch."""
    if biopsy.length_mm is not None:
        return biopsy.length_mm, "given"
    if biopsy.post_fire is None and biopsy.post_tip is None:
        return DEFAULT_LENGTH_MM, f"default ({DEFAULT_LENGTH_MM:g} mm notch)"
    if biopsy.post_fire is not None:
        fired, source = _tip(read_labelme(biopsy.post_fire)), biopsy.post_fire
    else:
        fired, source = np.array(biopsy.post_tip, float), biopsy.image
    length = distance_along(needle.tip, fired, needle.direction, spacing_mm)
    if length <= 0:
        raise InputError(source, f"zero-length specimen: the fired tip is {length:.2f} mm along "
                                 "the needle from the pre-fire tip; it must lie ahead of it")
    return length, "post-fire tip"


def post_fire_image(biopsy: Biopsy) -> Path | None:
    """The post-fire image beside its Labelme file, when there is one (for the overlay)."""
    if biopsy.post_fire is None:
        return None
    image = biopsy.post_fire.parent / read_labelme(biopsy.post_fire).image_path.replace("\\", "/")
    return image if image.is_file() else None


def read_core(path: Path, cancer_class: str) -> CoreAnnotation:
    """The core's axis (dyed end first), its outline if drawn, and its cancer polygons."""
    annotations = read_qupath_geojson(path)
    cores = [a for a in annotations if _is(a, CORE_LABEL)]
    dyes = [a for a in annotations if _is(a, DYE_LABEL) and a.geometry_type == "Point"]
    if len(cores) != 1:
        raise InputError(path, f"{len(cores)} features are named or classified {CORE_LABEL!r}; "
                               "draw the core once, as an outline or a line along its axis")
    if len(dyes) != 1:
        raise InputError(path, f"{len(dyes)} points are named or classified {DYE_LABEL!r}; mark "
                               "the dyed end of the core with one point")
    core, dye = cores[0], dyes[0].coordinates[0]
    if core.geometry_type == "LineString":
        ends, outline = (core.coordinates[0], core.coordinates[-1]), None
    elif core.geometry_type == "Polygon":
        outline = core.polygons[0].exterior
        ends = _long_axis(outline)
    else:
        raise InputError(path, f"the core is a {core.geometry_type}; draw it as a Polygon "
                               "outline or a LineString along its axis")
    start, end = (np.asarray(e, float) for e in ends)
    length = float(np.hypot(*(end - start)))
    if length == 0:
        raise InputError(path, "the core has no length")
    along = float((dye - start) @ (end - start)) / length**2  # 0 at start, 1 at end
    if 0.25 < along < 0.75:
        raise InputError(path, f"the {DYE_LABEL!r} point is near the middle of the core; put it "
                               "at the dyed end")
    dyed, far = (start, end) if along <= 0.5 else (end, start)
    drawn = [a for a in annotations if a.polygons and a is not core]
    cancer = tuple(p for a in drawn if (a.classification or "").lower() == cancer_class.lower()
                   for p in a.polygons)
    others = sorted({a.classification or "(unclassified)" for a in drawn
                     if (a.classification or "").lower() != cancer_class.lower()})
    return CoreAnnotation(path, dyed, far, outline, cancer, tuple(others))


def _tip(marks: LabelmeFile) -> np.ndarray:
    tips = marks.points(TIP_LABEL)
    if len(tips) != 1:
        found = f"no {TIP_LABEL!r} point" if len(tips) == 0 else f"{len(tips)} {TIP_LABEL!r} points"
        raise InputError(marks.path, f"{found}; mark the needle tip with one point")
    return tips[0]


def _is(annotation: GeoAnnotation, label: str) -> bool:
    return any(text is not None and text.lower() == label
               for text in (annotation.name, annotation.classification))


def _long_axis(outline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ends of the long centre line of the outline's smallest enclosing rectangle."""
    # OpenCV works in float32: centre the points first, so that slide coordinates in the
    # tens of thousands keep their fraction.
    centre = outline.mean(axis=0)
    box = cv2.boxPoints(cv2.minAreaRect((outline - centre).astype(np.float32))) + centre
    if np.hypot(*(box[1] - box[0])) >= np.hypot(*(box[2] - box[1])):
        return (box[0] + box[3]) / 2, (box[1] + box[2]) / 2
    return (box[0] + box[1]) / 2, (box[2] + box[3]) / 2
