"""The predictions table, the design's second contract: what a model said about each image, one
row per image, written by `predict`, the viewer and every evaluator and read by every
statistic, comparison and report.

One record holds what a model said about an image (`prediction_record`, JSON-ready: the viewer
sends it as it is); one encoding turns it into the table's cells for everyone
(`prediction_columns`): ``prob_<class>``
and ``predicted_class`` (class head; a detector's best instance), the decision columns where the
model has a rule, a detector's ``<class>_score`` / ``n_instances`` / ``instances``, and the lesion
columns: ``scan_area`` (what the lesion map was predicted on: `scan_area`), then
`lesion_fields`' ``lesion_detected``, ``lesion_count``, the main lesion's ``lesion_region``
(the image's region it lies in, where the image has regions), ``lesion_area_px`` / ``_mm2``,
``lesion_diameter_px`` / ``_mm`` (longest) and
``lesion_perpendicular_px`` / ``_mm`` (longest across it), and ``lesions``, every lesion's
figures as JSON (`sonocad.measure.find_lesions`: main first, specks dropped). An outline from
boxes a person drew (`sonocad outline`, the viewer) adds ``outline_source`` ("box") and
``boxes`` (JSON, [x0, y0, x1, y1] each). `sample_columns` adds what is known of an image
before a model sees it; evaluators add the truth and their per-image metrics. So a `predict`
table and an `evaluate` table of the same images join on ``image_id`` (`sonocad compare`).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from sonocad.data.sample import Sample
from sonocad.errors import InputError
from sonocad.io.atomic import write_json, write_text
from sonocad.io.outputs import record_write
from sonocad.io.pixels import Region
from sonocad.measure import (
    THRESHOLD,
    Diameter,
    Lesion,
    find_lesions,
    lesion_measurements,
    regional_lesions,
)

NO_LESION = "normal"  # a detector's call for an image where it found no instance

# The main lesion's sizes (NaN without one)
MAIN_LESION_SIZES = ("lesion_area_mm2", "lesion_diameter_px", "lesion_diameter_mm",
                     "lesion_perpendicular_px", "lesion_perpendicular_mm")
# Columns every table starts with; metric and probability columns follow.
ID_COLUMNS = ("image_id", "patient_id", "source", "scanner", "label")


@dataclass(frozen=True)
class Instance:
    """One detected lesion in the image's own pixels."""

    label: str  # benign / malignant
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    mask: np.ndarray  # bool (H, W)


@dataclass(frozen=True)
class Decision:
    """A multitask model's class call reconciled with its outline (`inference.decision`)."""

    final_class: str
    reason: str  # "" when the heads agree
    uncertainty: float
    low_confidence: bool
    p_malignant: float | None = None  # calibrated where the rule holds a scaling
    rule_out: bool | None = None  # None: the rule has no rule-out point


@dataclass
class Prediction:
    """What a model says about one image."""

    # float32 (H, W) at the image's size (models with a lesion map); a detector's is its
    # instance scores
    lesion_probability: np.ndarray | None
    class_probabilities: dict[str, float] | None  # models with a class head
    decision: Decision | None = None  # multitask models whose meta holds a decision rule
    instances: list[Instance] | None = None  # a detector's found lesions, best first
    top_scores: dict[str, float] | None = None  # a detector's top score per class (any score)
    # the image's regions (calibrated, or a capture's estimated scan area), each predicted on
    # its own (nothing outside them is lesion)
    regions: tuple[Region, ...] = ()
    # boxes (x0, y0, x1, y1) a person drew, each outlined by LiteMedSAM into the lesion map
    prompt_boxes: tuple[tuple[float, float, float, float], ...] = ()
    _lesions: dict[tuple[float, float] | None, list[Lesion]] = field(
        default_factory=dict, repr=False, compare=False)

    def lesions(self, spacing_mm: tuple[float, float] | None) -> list[Lesion]:
        """Each lesion of the lesion map, main first (`sonocad.measure.find_lesions`), found
        once per spacing: the table, the overlay and the DICOM report share them. With regions,
        each region's lesions are found in it with its own spacing (`regional_lesions`)."""
        if self.lesion_probability is None:
            return []
        if spacing_mm not in self._lesions:
            self._lesions[spacing_mm] = (
                regional_lesions(self.lesion_probability,
                                 [(r.box, r.spacing_mm or spacing_mm) for r in self.regions])
                if self.regions else find_lesions(self.lesion_probability, spacing_mm))
        return self._lesions[spacing_mm]

    @property
    def mask(self) -> np.ndarray | None:
        if self.lesion_probability is None:
            return None
        return self.lesion_probability > THRESHOLD

    @property
    def predicted_class(self) -> str | None:
        """The class head's argmax (the raw call); a detector's: its best instance's class, or
        "normal" when it found none."""
        if self.instances is not None:
            return self.instances[0].label if self.instances else NO_LESION
        if not self.class_probabilities:
            return None
        return max(self.class_probabilities, key=self.class_probabilities.__getitem__)

    @property
    def final_class(self) -> str | None:
        """The call reconciled with the lesion outline where the model has a rule, else the
        argmax."""
        return self.decision.final_class if self.decision else self.predicted_class


def sample_columns(sample: Sample) -> dict[str, Any]:
    """What the table says about an image before any model has seen it: its id, its ``file``
    (the path it was read from, given or under the data root: a reader can open it), patient,
    source, scanner and label, then the clinical fields its data set gives (BUS-BRA's ``birads``,
    ``histology`` and ``side``; a manifest's extra columns), which `evaluate --by` and a
    researcher's own statistics read."""
    fixed = {"image_id": sample.image_id, "file": str(sample.image_path),
             "patient_id": sample.patient_id,
             "source": sample.source, "scanner": sample.scanner, "label": sample.label}
    clinical = {name: value or None for name, value in sample.clinical.items()
                if name not in fixed}
    return {**fixed, **clinical}


def prediction_record(prediction: Prediction, spacing_mm: tuple[float, float] | None
                      ) -> dict[str, Any]:
    """Every field of one image's prediction, JSON-ready: lists and mappings as they are, yes /
    no as booleans, None where a value is unknown. The one record the three writers share: the
    viewer sends it as it is, the table (`prediction_columns`) and through it the DICOM report
    write it in their own encodings."""
    record: dict[str, Any] = {}
    if prediction.class_probabilities:
        record["class_probabilities"] = dict(prediction.class_probabilities)
        record["predicted_class"] = prediction.predicted_class
        record.update(decision_fields(prediction.decision))
    if prediction.instances is not None:
        record["predicted_class"] = prediction.predicted_class
        record.update(detection_fields(prediction.instances, prediction.top_scores or {},
                                       spacing_mm))
    if prediction.lesion_probability is not None:
        record["scan_area"] = scan_area(prediction.regions)
        record.update(lesion_fields(prediction.lesions(spacing_mm)))
        record["outline_source"] = "box" if prediction.prompt_boxes else "model"
        record["boxes"] = [[round(v, 1) for v in box] for box in prediction.prompt_boxes]
    return record


def prediction_columns(prediction: Prediction, spacing_mm: tuple[float, float] | None
                       ) -> dict[str, Any]:
    """The model's columns of one image's row (see the module's docstring): the table's
    encoding of `prediction_record`."""
    return table_cells(prediction_record(prediction, spacing_mm))


def table_cells(record: dict[str, Any]) -> dict[str, Any]:
    """A prediction record as table cells: one ``prob_<class>`` column per class, yes / no as
    1 / 0, lists as compact JSON text, the main lesion's unknown sizes as NaN (a number column
    stays numeric), and ``outline_source`` / ``boxes`` only for an outline from boxes."""
    cells: dict[str, Any] = {}
    for key, value in record.items():
        if key == "class_probabilities":
            cells.update({f"prob_{name}": p for name, p in value.items()})
        elif key in ("outline_source", "boxes") and record.get("outline_source") != "box":
            continue
        elif isinstance(value, bool):
            cells[key] = int(value)
        elif isinstance(value, (list, dict)):
            cells[key] = json.dumps(value, separators=(",", ":"))
        elif key in MAIN_LESION_SIZES and value is None:
            cells[key] = math.nan
        else:
            cells[key] = value
    return cells


def scan_area(regions: Sequence[Region]) -> str | None:
    """What the lesion map was predicted on: "dicom regions" (the file's calibrated regions),
    "estimated" (a screen capture's scan area, `sonocad.io.scan_area`) or None (the whole
    image)."""
    if not regions:
        return None
    return "estimated" if any(region.estimated for region in regions) else "dicom regions"


def lesion_fields(lesions: Sequence[Lesion]) -> dict[str, Any]:
    """Whether and how many lesions, the main one's region, area and two diameters in px and mm
    (None without a lesion or, for mm, a spacing; a lesion-free image has area 0), and every
    lesion's figures (`Lesion.record`)."""
    fields: dict[str, Any] = {
        "lesion_detected": bool(lesions), "lesion_count": len(lesions),
        "lesion_region": lesions[0].region if lesions else None,
        "lesion_area_px": 0, **dict.fromkeys(MAIN_LESION_SIZES),
        "lesions": [lesion.record() for lesion in lesions]}
    if lesions:
        main = lesions[0]
        # One pixel has no width: 0, in mm too where the spacing is known.
        cross = main.perpendicular or Diameter(0.0, main.diameter.length_mm, (0, 0), (0, 0))
        fields.update(lesion_area_px=int(main.area_px), lesion_area_mm2=main.area_mm2,
                      lesion_diameter_px=main.diameter.length_px,
                      lesion_diameter_mm=main.diameter.length_mm,
                      lesion_perpendicular_px=cross.length_px,
                      lesion_perpendicular_mm=cross.length_mm)
    return {key: None if isinstance(value, float) and math.isnan(value) else value
            for key, value in fields.items()}


def decision_fields(decision: Decision | None) -> dict[str, Any]:
    """The fields of a decision (none for a model without a rule)."""
    if decision is None:
        return {}
    return {"final_class": decision.final_class, "decision_reason": decision.reason,
            "uncertainty": round(decision.uncertainty, 4),
            "low_confidence": decision.low_confidence,
            "p_malignant": None if decision.p_malignant is None
            else round(decision.p_malignant, 4),
            "rule_out": decision.rule_out}


def instance_records(instances: Sequence[Instance], spacing_mm: tuple[float, float] | None
                     ) -> list[dict[str, object]]:
    """JSON-ready instances: class, score, box [x0, y0, x1, y1] and the sizes of its mask
    (area and longest diameter in px, and in mm where the spacing is known, else None)."""
    records = []
    for instance in instances:
        sizes = lesion_measurements(instance.mask, spacing_mm)
        records.append({"label": instance.label, "score": round(instance.score, 4),
                        "box": [round(v, 1) for v in instance.box],
                        **{key: None if math.isnan(value) else round(value, 2)
                           for key, value in sizes.items()}})
    return records


def detection_fields(instances: Sequence[Instance], top_scores: dict[str, float],
                     spacing_mm: tuple[float, float] | None) -> dict[str, Any]:
    """What a detector's row and the viewer report: the top score per class
    (``malignant_score`` is QIMS 2023's image-level score), ``n_instances`` and the found
    ``instances`` (`instance_records`)."""
    records = instance_records(instances, spacing_mm)
    return {**{f"{name}_score": score for name, score in top_scores.items()},
            "n_instances": len(records), "instances": records}


def write_predictions(stem: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write `stem`.csv and `stem`.json (same rows) atomically."""
    stem = Path(stem)
    write_text(stem.with_suffix(".csv"), csv_text(_columns(rows), rows))
    _write_json_rows(stem, rows)


class PredictionsStream:
    """A predictions table written as rows come: `stem`.csv grows row by row, flushed, so a
    killed run leaves a valid table up to its last whole row; `close` adds `stem`.json.

    With ``resume`` an earlier table is kept (a torn last row dropped) and `earlier` holds its
    rows; new rows must have its columns. Every row of one call to `add` lands in one write.
    """

    def __init__(self, stem: str | Path, *, resume: bool = False) -> None:
        self.stem = Path(stem)
        self.path = self.stem.with_suffix(".csv")
        self.earlier: list[dict[str, Any]] = []
        self._fields: list[str] | None = None
        self._handle: IO[str] | None = None
        if resume and self.path.exists():
            self._fields, self.earlier = _whole_rows(self.path)
            write_text(self.path, csv_text(self._fields, self.earlier) if self._fields else "")
        self.rows: list[dict[str, Any]] = list(self.earlier)

    def add(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._fields is None:
            self._fields = _columns(rows)
        if self._handle is None:
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            if fresh:
                record_write(self.path)
            self._handle = self.path.open("a" if not fresh else "w", newline="",
                                          encoding="utf-8")
            if fresh:
                self._handle.write(csv_text(self._fields, []))
        extra = {key for row in rows for key in row} - set(self._fields)
        if extra:
            raise InputError(self.path, f"the table has no column {sorted(extra)[0]!r}: it was "
                                        "written by another model; predict into a new folder")
        self._handle.write(csv_text(self._fields, rows, header=False))
        self._handle.flush()
        self.rows.extend(rows)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._fields is None:  # no rows at all: still a table, with the id columns
            write_text(self.path, csv_text(list(ID_COLUMNS), []))
        _write_json_rows(self.stem, self.rows)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys([*ID_COLUMNS, *(key for row in rows for key in row)]))


def csv_text(fields: list[str], rows: list[dict[str, Any]], header: bool = True) -> str:
    """Rows as the table's CSV cells (6 significant digits, formulas escaped): every table
    sonocad writes for a spreadsheet uses it."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="raise")
    if header:
        writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _write_json_rows(stem: Path, rows: list[dict[str, Any]]) -> None:
    write_json(stem.with_suffix(".json"), [{k: _json_value(v) for k, v in r.items()} for r in rows])


def _whole_rows(path: Path) -> tuple[list[str] | None, list[dict[str, Any]]]:
    """The columns and complete rows of a table a killed run may have left torn at its end."""
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    if rows and not text.endswith("\n"):
        rows.pop()  # the kill came in the middle of this row
    fields = list(reader.fieldnames) if reader.fieldnames else None
    return fields, [_parsed(row) for row in rows]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a predictions CSV, numbers parsed (but not in `TEXT_COLUMNS`: ids stay text);
    empty cells become None."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "image_id" not in reader.fieldnames:
                raise InputError(path, "not a predictions table (no image_id column)")
            return [_parsed(row) for row in reader]
    except FileNotFoundError:
        raise InputError(path, "no such predictions table") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"unreadable predictions table ({exc})") from None


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return _FORMULA_ESCAPE + value
    return value


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection, OWASP):
# text cells such as ids and file names are written with a leading apostrophe, which
# spreadsheets show as text and `read_predictions` removes again.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_ESCAPE = "'"


# Read as text, never as numbers: patient "01" and patient "1" are two people.
TEXT_COLUMNS = frozenset({*ID_COLUMNS, "file", "output_name"})


def _parsed(row: dict[str, str | None]) -> dict[str, Any]:
    return {key: (_unescaped(value) or None) if key in TEXT_COLUMNS else _parse(value)
            for key, value in row.items()}


def _unescaped(text: str | None) -> str | None:
    if text and text.startswith(_FORMULA_ESCAPE) and text[1:].startswith(_FORMULA_STARTS):
        return text[1:]
    return text


def _parse(text: str | None) -> Any:
    if text is None or text == "":
        return None
    text = _unescaped(text)
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
