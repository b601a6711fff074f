"""The fields that describe one biopsy (CSV columns, or `sonocad register` options of the same
name: ``--post-fire`` for ``post_fire``) and their checking. Light on imports on purpose: the
command line builds its options from FIELD_HELP on every start.

The needle comes from Labelme marks or from a tip and an angle; the specimen length from a
number, the fired tip in the post-fire image, or the 16G notch of the paper.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sonocad.errors import SonocadError

# Nominal outer diameters (mm) of biopsy needles by Stubs gauge: the width of the tract.
GAUGE_DIAMETER_MM: dict[int, float] = {12: 2.769, 14: 2.108, 16: 1.651, 18: 1.270, 20: 0.908}

# field: (metavar, meaning); the command line's help and the CSV's documentation
FIELD_HELP: dict[str, tuple[str, str]] = {
    "image": ("FILE", "the pre-fire ultrasound image (PNG, JPEG, BMP, TIFF or DICOM)"),
    "geojson": ("FILE", "the slide's QuPath GeoJSON: the core as a polygon outline or a line "
                "along its axis, named or classified 'core'; a point 'dye' at its dyed end; "
                "cancer polygons classified CANCER_CLASS"),
    "labelme": ("FILE", "Labelme JSON of the pre-fire image: a point 'tip' at the needle tip "
                "and a point or line 'needle' on the shaft behind it"),
    "tip": ("X,Y", "instead of --labelme: the needle tip in pixels"),
    "angle": ("DEG", "with --tip: the needle direction, degrees clockwise on screen from "
              "pointing right (90 points down)"),
    "length": ("MM", "specimen length (default 22, the notch of the paper's 16G needle)"),
    "post_fire": ("FILE", "instead of --length: Labelme JSON of the post-fire image (same view) "
                  "with a point 'tip' at the fired tip"),
    "post_tip": ("X,Y", "instead of --length: the fired tip in pixels"),
    "spacing": ("MM", "pixel spacing, 'MM' or 'ROW,COL' mm per pixel (default: from DICOM)"),
    "wsi_mpp": ("UM", "micrometres per slide pixel, the slide's MPP (required)"),
    "shrinkage": ("F", "fraction the tissue shrank by in processing, e.g. 0.1 (default 0)"),
    "gauge": ("G", "needle gauge, which sets the tract width (default 16: 1.651 mm)"),
    "margin": ("MM", "tissue kept around the tract in the crop (default 3)"),
    "id": ("NAME", "output name (default: the image file's stem)"),
    "patient_id": ("ID", "keeps a patient's biopsies in one subset when splitting"),
    "cancer_class": ("NAME", "classification of the cancer polygons (default Tumor)"),
}
FIELDS = tuple(FIELD_HELP)
PATH_FIELDS = ("image", "geojson", "labelme", "post_fire")
# Each group gives one thing in alternative ways; a CSV row that fills any field of a group
# replaces the command line's whole group.
_ALTERNATIVES = (("labelme", "tip", "angle"), ("length", "post_fire", "post_tip"))

DEFAULT_LENGTH_MM = 22.0  # the notch of the 16G needle in the JMIR paper
DEFAULT_GAUGE, DEFAULT_MARGIN_MM, DEFAULT_CANCER_CLASS = 16, 3.0, "Tumor"


@dataclass(frozen=True)
class Biopsy:
    """One biopsy's fields, parsed and checked, before any file is read."""

    id: str
    image: Path
    geojson: Path
    wsi_mpp: float
    labelme: Path | None = None
    tip: tuple[float, float] | None = None
    angle_deg: float | None = None
    length_mm: float | None = None
    post_fire: Path | None = None
    post_tip: tuple[float, float] | None = None
    spacing_mm: tuple[float, float] | None = None
    shrinkage: float = 0.0
    gauge: int = DEFAULT_GAUGE
    margin_mm: float = DEFAULT_MARGIN_MM
    patient_id: str | None = None
    cancer_class: str = DEFAULT_CANCER_CLASS


def merge_fields(defaults: Mapping[str, str], row: Mapping[str, str]) -> dict[str, str]:
    """`row`'s non-blank fields over `defaults`; a row that gives the needle or the specimen
    length in any way drops the defaults' other ways of giving it."""
    given = {name: value.strip() for name, value in row.items() if value and value.strip()}
    merged = dict(defaults)
    for group in _ALTERNATIVES:
        if any(name in given for name in group):
            for name in group:
                merged.pop(name, None)
    return {**merged, **given}


def parse_biopsy(fields: Mapping[str, str]) -> Biopsy:
    """Check and convert `fields` (names from FIELDS); the caller says where they came from."""
    def number(name: str) -> float | None:
        text = fields.get(name)
        if text is None:
            return None
        try:
            value = float(text)
        except ValueError:
            raise SonocadError(f"{name} {text!r} is not a number") from None
        if not math.isfinite(value):
            raise SonocadError(f"{name} {text!r} is not a finite number")
        return value

    def pair(name: str) -> tuple[float, float] | None:
        text = fields.get(name)
        if text is None:
            return None
        try:
            values = [float(v) for v in re.split(r"[;, ]+", text.strip()) if v]
        except ValueError:
            values = []
        if len(values) != 2 or not all(math.isfinite(v) for v in values):
            raise SonocadError(f"{name} {text!r} is not two numbers x,y")
        return values[0], values[1]

    for name in ("image", "geojson", "wsi_mpp"):
        if not fields.get(name):
            raise SonocadError(f"no {name} given")
    if "labelme" in fields and ("tip" in fields or "angle" in fields):
        raise SonocadError("give the needle either as labelme or as tip and angle, not both")
    if "labelme" not in fields and not ("tip" in fields and "angle" in fields):
        raise SonocadError("no needle: give labelme (tip and needle marks) or tip and angle")
    lengths = [name for name in _ALTERNATIVES[1] if name in fields]
    if len(lengths) > 1:
        raise SonocadError(f"give the specimen length one way, not as {' and '.join(lengths)}")

    image = Path(fields["image"])
    length, mpp = number("length"), float(number("wsi_mpp") or 0)
    shrinkage, margin = number("shrinkage") or 0.0, number("margin")
    if length is not None and length <= 0:
        raise SonocadError(f"zero-length specimen: length is {length:g} mm")
    if mpp <= 0:
        raise SonocadError(f"wsi_mpp must be positive, not {mpp:g}")
    if not 0 <= shrinkage < 1:
        raise SonocadError(f"shrinkage is the fraction the tissue shrank by, in [0, 1); "
                           f"not {shrinkage:g}")
    if margin is not None and margin < 0:
        raise SonocadError(f"margin must not be negative, not {margin:g}")
    gauge = _gauge(fields.get("gauge", str(DEFAULT_GAUGE)))
    biopsy_id = fields.get("id") or image.stem
    if Path(biopsy_id).name != biopsy_id or biopsy_id.startswith("."):
        raise SonocadError(f"id {biopsy_id!r} must be a plain file name")
    return Biopsy(
        id=biopsy_id, image=image, geojson=Path(fields["geojson"]), wsi_mpp=mpp,
        labelme=_path(fields.get("labelme")), tip=pair("tip"), angle_deg=number("angle"),
        length_mm=length, post_fire=_path(fields.get("post_fire")), post_tip=pair("post_tip"),
        spacing_mm=_spacing(fields.get("spacing")), shrinkage=shrinkage, gauge=gauge,
        margin_mm=DEFAULT_MARGIN_MM if margin is None else margin,
        patient_id=fields.get("patient_id"),
        cancer_class=fields.get("cancer_class", DEFAULT_CANCER_CLASS))


def _gauge(text: str) -> int:
    gauge = text.strip().upper().removesuffix("G")
    if not gauge.isdigit() or int(gauge) not in GAUGE_DIAMETER_MM:
        known = ", ".join(str(g) for g in GAUGE_DIAMETER_MM)
        raise SonocadError(f"gauge {text!r} is not one of {known}")
    return int(gauge)


def _spacing(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in re.split(r"[;x, ]+", text.strip()) if v]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise SonocadError(f"spacing {text!r} is not one or two positive numbers (mm per pixel)")
    return values[0], values[-1]


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None
