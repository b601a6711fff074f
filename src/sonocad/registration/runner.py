"""`sonocad register`: map a slide's cancer outlines onto the pre-fire ultrasound image, and
write the needle-tract crops as a dataset the segmentation recipes read as is.

Every run writes into one dataset folder: the Pascal VOC layout that `open_dataset` detects,
plus a manifest that also carries patient ids and pixel spacing.

  JPEGImages/<id>.png         the tract crop of the pre-fire image (PNG, bit depth kept)
  SegmentationClass/<id>.png  its mask: palette PNG, 0 background, 1 cancer ("malignant")
  labelme/<id>.json           the mapped cancer outlines on the crop (outer rings only:
                              Labelme has no holes; the VOC mask keeps them)
  overlays/<id>.png           the crop with the tract (yellow) and the cancer (green), beside
                              the same crop of the post-fire image when that can be read
  transforms/<id>.json        the record: inputs, spacing, needle, specimen length and its
                              source, crop box, and the affine maps slide -> image and crop
  class_names.txt             _background_, malignant (as labelme2voc writes it)
  manifest.csv                every biopsy in the folder: image, mask, label (malignant, or
                              normal for a core without cancer), patient_id, pixel_spacing_mm;
                              split and train on it to keep each patient's cores together

The manifest is rebuilt from transforms/ after every run, so that single registrations into
one folder add up to a dataset.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.errors import InputError, SonocadError
from sonocad.io.annotations import (
    GeoAnnotation,
    GeoPolygon,
    Shape,
    geojson_mask,
    save_voc_mask,
    write_labelme,
)
from sonocad.io.atomic import save_png, write_json, write_text
from sonocad.io.images import read_image
from sonocad.io.outputs import claim_output_dir, output_of
from sonocad.progress import progress
from sonocad.registration.fields import FIELDS, PATH_FIELDS, Biopsy, merge_fields, parse_biopsy
from sonocad.registration.geometry import (
    CoreAxis,
    Tract,
    apply,
    crop_box,
    needle_width_mm,
    outline_problem,
    tract_problem,
)
from sonocad.registration.inputs import (
    CoreAnnotation,
    post_fire_image,
    read_core,
    read_needle,
    read_ultrasound,
    specimen_length,
)
from sonocad.visual import TRUTH_COLOUR, draw_outlines

FORMAT = "sonocad-registration/1"
VOC_CLASSES = ("_background_", "malignant")
TRACT_COLOUR = (255, 210, 0)
_PANEL_GAP = 4  # black pixels between the pre-fire and post-fire panels of an overlay


@dataclass(frozen=True, eq=False)
class Registration:
    """One biopsy mapped: the crop, its cancer mask and outlines, and the record of how."""

    biopsy: Biopsy
    crop: np.ndarray  # pre-fire image pixels inside the crop box
    post_crop: np.ndarray | None  # the same box of the post-fire image
    mask: np.ndarray  # bool, crop-sized: cancer
    outlines: tuple[GeoPolygon, ...]  # cancer polygons in crop pixels
    tract: np.ndarray  # (4, 2) tract corners in crop pixels
    record: dict[str, Any]  # transforms/<id>.json


@dataclass(frozen=True)
class BatchResult:
    out_dir: Path
    registered: list[str]  # biopsy ids
    failures: list[str]  # one line each, naming the CSV line and the file at fault


def register(biopsy: Biopsy) -> Registration:
    """Read one biopsy's files and map its cancer outlines into the tract crop."""
    image = read_ultrasound(biopsy)
    spacing = image.spacing_mm
    assert spacing is not None  # read_ultrasound insists on it
    needle = read_needle(biopsy)
    length, length_source = specimen_length(biopsy, needle, spacing)
    tract = Tract(needle.tip, needle.direction, length, needle_width_mm(biopsy.gauge), spacing)
    if problem := tract_problem(tract, image.shape):
        raise InputError(needle.source, problem)
    core = read_core(biopsy.geojson, biopsy.cancer_class)
    axis = CoreAxis(core.dyed_end, core.far_end, biopsy.wsi_mpp, biopsy.shrinkage)
    _check_outlines(core, axis, tract)

    box = crop_box(tract, image.shape, biopsy.margin_mm)
    slide_to_image = tract.core_to_image @ axis.slide_to_core
    slide_to_crop = box.to_crop @ slide_to_image
    outlines = tuple(GeoPolygon(apply(slide_to_crop, p.exterior),
                                tuple(apply(slide_to_crop, h) for h in p.holes))
                     for p in core.cancer)
    mask = _rasterise(outlines, box.shape)
    post_path = post_fire_image(biopsy)
    post_crop = None if post_path is None else box.take(_same_view(post_path, image.shape))
    record = {
        "format": FORMAT, "id": biopsy.id, "patient_id": biopsy.patient_id,
        "inputs": {name: str(getattr(biopsy, name)) for name in PATH_FIELDS
                   if getattr(biopsy, name) is not None},
        "image_size": [image.width, image.height], "spacing_mm": list(spacing),
        "needle": {"tip_px": needle.tip, "angle_deg": tract.angle_deg, "gauge": biopsy.gauge,
                   "width_mm": tract.width_mm},
        "specimen": {"length_mm": length, "from": length_source},
        "tract_px": tract.corners(),
        "crop": {"x": box.x0, "y": box.y0, "width": box.shape[1], "height": box.shape[0],
                 "margin_mm": biopsy.margin_mm},
        "core": {"drawn_as": "axis" if core.outline is None else "outline",
                 "dyed_end_px": core.dyed_end, "far_end_px": core.far_end,
                 "length_mm": axis.length_mm, "wsi_mpp": biopsy.wsi_mpp,
                 "shrinkage": biopsy.shrinkage, "dyed_end_is": "deep (at the fired tip)"},
        "maps": {"slide_px_to_image_px": slide_to_image[:2],
                 "slide_px_to_crop_px": slide_to_crop[:2],
                 "core_mm_to_image_px": tract.core_to_image[:2]},
        "cancer": {"class": biopsy.cancer_class, "outlines": len(outlines),
                   "pixels": int(mask.sum()),
                   "area_mm2": float(mask.sum() * spacing[0] * spacing[1]),
                   "other_classes_left_out": list(core.other_classes)},
    }
    return Registration(biopsy, box.take(image.pixels), post_crop, mask, outlines,
                        apply(box.to_crop, tract.corners()), record)


def register_one(fields: Mapping[str, str], out: str | Path, *,
                 overwrite: bool = False) -> Registration:
    """Register the biopsy the command line describes into the dataset folder `out`."""
    biopsy = parse_biopsy(fields)
    claim_dataset(out, [fields["image"]], overwrite)
    registration = register(biopsy)
    write_registration(out, registration)
    write_index(out)
    return registration


def register_batch(csv_path: str | Path, out: str | Path,
                   defaults: Mapping[str, str] | None = None, *,
                   overwrite: bool = False) -> BatchResult:
    """Register every row of `csv_path` (columns: FIELDS; blanks take `defaults`) into `out`.
    A bad row is recorded in the result's failures and the rest carry on."""
    csv_path, out = Path(csv_path), Path(out)
    claim_dataset(out, [csv_path], overwrite)
    registered, failures, used = [], [], {}
    for line, row in progress(_read_rows(csv_path), "registering", unit="biopsies"):
        try:
            fields = merge_fields(defaults or {}, _resolve_paths(row, csv_path.parent))
            biopsy = parse_biopsy(fields)
            if biopsy.id in used:
                raise SonocadError(f"id {biopsy.id!r} is already used on line {used[biopsy.id]}")
            used[biopsy.id] = line
            write_registration(out, register(biopsy))
            registered.append(biopsy.id)
        except SonocadError as exc:
            failures.append(f"{csv_path}, line {line}: {exc}")
    if registered:
        write_index(out)
    return BatchResult(out, registered, failures)


def describe(registration: Registration) -> str:
    """One line for people: what was found where."""
    record = registration.record
    crop, cancer, specimen = record["crop"], record["cancer"], record["specimen"]
    line = (f"{registration.biopsy.id}: {crop['width']}x{crop['height']} crop, specimen "
            f"{specimen['length_mm']:.1f} mm ({specimen['from']}), cancer "
            f"{cancer['area_mm2']:.2f} mm2 in {cancer['outlines']} outline(s)")
    if cancer["other_classes_left_out"]:
        line += f"; left out polygons of {', '.join(cancer['other_classes_left_out'])}"
    return line


# --- writing -----------------------------------------------------------------------------------


def claim_dataset(out: str | Path, inputs: list[str | Path], overwrite: bool) -> None:
    """A register dataset grows run by run: an earlier register output is added to (or started
    afresh with `overwrite`); any other folder follows the output rule of every command."""
    adding = output_of(out) == "register" and not overwrite
    claim_output_dir(out, "register", inputs=inputs, overwrite=overwrite, resume=adding)


def write_registration(out: str | Path, registration: Registration) -> None:
    """Write one biopsy's crop, masks, overlay and record into the dataset folder `out`;
    an id already registered there is refused (its files stay as they are)."""
    out, name = Path(out), registration.biopsy.id
    if (out / "transforms" / f"{name}.json").exists():
        raise SonocadError(f"biopsy id {name!r} is already registered in {out}; give another "
                           "id, or --overwrite to start the dataset afresh")
    save_png(out / "JPEGImages" / f"{name}.png", registration.crop)
    save_voc_mask(out / "SegmentationClass" / f"{name}.png", registration.mask.astype(np.uint8),
                  VOC_CLASSES)
    shapes = [Shape(VOC_CLASSES[1], "polygon", _open_ring(p.exterior))
              for p in registration.outlines]
    write_labelme(out / "labelme" / f"{name}.json", f"../JPEGImages/{name}.png",
                  registration.mask.shape, shapes)
    save_png(out / "overlays" / f"{name}.png", overlay(registration))
    write_json(out / "transforms" / f"{name}.json", registration.record)


def overlay(registration: Registration) -> np.ndarray:
    """The crop with the tract and the cancer outlined, beside the post-fire crop if any."""
    tract = _rasterise((GeoPolygon(registration.tract),), registration.mask.shape)
    marks = [(tract, TRACT_COLOUR), (registration.mask, TRUTH_COLOUR)]
    panels = [draw_outlines(pixels, marks, width=1)
              for pixels in (registration.crop, registration.post_crop) if pixels is not None]
    gap = np.zeros((registration.mask.shape[0], _PANEL_GAP, 3), np.uint8)
    return np.concatenate([panels[0], *(part for panel in panels[1:] for part in (gap, panel))],
                          axis=1)


def write_index(out: str | Path) -> None:
    """(Re)write class_names.txt and manifest.csv from every record in `out`/transforms."""
    out = Path(out)
    records = [json.loads(path.read_text(encoding="utf-8"))
               for path in sorted((out / "transforms").glob("*.json"))]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "mask", "label", "patient_id", "pixel_spacing_mm"])
    for record in (r for r in records if r.get("format") == FORMAT):
        name, (row_mm, col_mm) = record["id"], record["spacing_mm"]
        writer.writerow([f"JPEGImages/{name}.png", f"SegmentationClass/{name}.png",
                         "malignant" if record["cancer"]["pixels"] else "normal",
                         record["patient_id"] or "",
                         f"{row_mm:g}" if row_mm == col_mm else f"{row_mm:g};{col_mm:g}"])
    write_text(out / "class_names.txt", "\n".join(VOC_CLASSES) + "\n")
    write_text(out / "manifest.csv", buffer.getvalue())


# --- helpers -----------------------------------------------------------------------------------


def _check_outlines(core: CoreAnnotation, axis: CoreAxis, tract: Tract) -> None:
    """Cancer must lie on the core (its outline, else a needle-wide strip along its axis) and
    within the specimen."""
    to_core = axis.slide_to_core
    if core.outline is not None:
        region = apply(to_core, core.outline)
    else:
        half = tract.width_mm / 2
        region = np.array([[0, -half], [axis.length_mm, -half], [axis.length_mm, half],
                           [0, half]])
    outlines = [apply(to_core, polygon.exterior) for polygon in core.cancer]
    if problem := outline_problem(outlines, region, tract.length_mm):
        raise InputError(core.path, problem)


def _rasterise(polygons: tuple[GeoPolygon, ...], shape: tuple[int, int]) -> np.ndarray:
    return geojson_mask([GeoAnnotation(None, None, "MultiPolygon", polygons)], shape)


def _same_view(path: Path, shape: tuple[int, int]) -> np.ndarray:
    pixels = read_image(path).pixels
    if pixels.shape[:2] != shape:
        raise InputError(path, f"post-fire image is {pixels.shape[1]}x{pixels.shape[0]} but the "
                               f"pre-fire image is {shape[1]}x{shape[0]}; they must share a view")
    return pixels


def _open_ring(ring: np.ndarray) -> np.ndarray:
    """A GeoJSON ring repeats its first point at the end; a Labelme polygon does not."""
    return ring[:-1] if len(ring) > 3 and np.array_equal(ring[0], ring[-1]) else ring


def _read_rows(csv_path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of every biopsy in the CSV; unknown columns are an error."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            unknown = sorted(set(reader.fieldnames or ()) - set(FIELDS))
            if unknown:
                raise InputError(csv_path, f"unknown column(s) {', '.join(unknown)}; known: "
                                           f"{', '.join(FIELDS)}")
            rows = [(line, row) for line, row in enumerate(reader, start=2)]
    except OSError as exc:
        raise InputError(csv_path, f"cannot read: {exc.strerror or exc}") from None
    if not rows:
        raise InputError(csv_path, "no biopsies (the CSV has no rows)")
    return rows


def _resolve_paths(row: Mapping[str | None, Any], base: Path) -> dict[str, str]:
    """The row's fields with its file names made relative to the CSV's folder."""
    if None in row:  # csv.DictReader files surplus cells under None
        raise SonocadError("the row has more cells than the CSV has columns")
    return {name: str(base / value.strip()) if name in PATH_FIELDS and value and value.strip()
            else value or "" for name, value in row.items()}
