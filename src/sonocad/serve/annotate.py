"""Annotation mode's data set: a hospital's images, labelled one by one, as a folder that
`sonocad data check` and training read (`sonocad serve --annotate DATASET_DIR --images DIR`).

The images are found as `sonocad predict` finds them in a folder (images and DICOM files,
recursively; masks, annotations, hidden files and sonocad's own outputs left out), sorted by
their path under the folder, which is their id. Saving one writes, in the data set folder:

  images/<id>          a byte-for-byte copy of the original (the original is only ever read)
  masks/<id stem>.png  the lesion outline at the image's size, 0/255 (benign and malignant
                       images; a normal image has no mask)
  manifest.csv         one row per saved image: image, mask, label, patient_id,
                       pixel_spacing_mm, and where the outline came from (outline_source
                       "model" or "box", and the boxes as JSON); written whole, atomically

The folder is claimed as `sonocad.io.outputs` claims any output (a new or empty folder, or an
earlier annotation's, which is continued; never one that overlaps the images), so restarting
with the same folder resumes: saved images show as done, and saving one again replaces its row
and mask. A cine loop or multi-page file is annotated on its first frame, the one training
reads.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from sonocad.data.sample import CLASS_NAMES, LESION_CLASSES
from sonocad.errors import InputError, SonocadError
from sonocad.io.atomic import atomic_open, save_png, write_text
from sonocad.io.images import read_image
from sonocad.io.outputs import claim_output_dir, output_of, output_stem
from sonocad.io.pixels import Image
from sonocad.io.spacing import parse_spacing, spacing_text
from sonocad.workflows.predict import collect_inputs

COMMAND = "annotate"  # the output marker's command: an annotation folder is resumed
MANIFEST = "manifest.csv"
COLUMNS = ("image", "mask", "label", "patient_id", "pixel_spacing_mm", "outline_source",
           "boxes")
MAX_PATIENT_ID = 64


@dataclass(frozen=True)
class Item:
    """One image to annotate: its id (path under the images folder) and its file."""

    image_id: str
    path: Path

    @property
    def image_cell(self) -> str:
        """Its manifest cell: where its copy lies, relative to the manifest."""
        return f"images/{self.image_id}"


class Annotations:
    """The images to annotate and the data set folder their annotations are saved in."""

    def __init__(self, dataset_dir: str | Path, images_dir: str | Path) -> None:
        self.root, images_dir = Path(dataset_dir), Path(images_dir)
        if not images_dir.is_dir():
            raise InputError(images_dir, "is not a folder of images to annotate")
        sources, self.skipped = collect_inputs([images_dir])
        self.items = [Item(source.image_id, source.path) for source in sources]
        if not self.items:
            raise InputError(images_dir, "holds no images to annotate")
        claim_output_dir(self.root, COMMAND, inputs=[images_dir],
                         resume=output_of(self.root) == COMMAND)
        self._columns, self._rows = _read_manifest(self.root / MANIFEST)
        self._lock = threading.Lock()  # saves come from request threads

    def listing(self) -> dict[str, Any]:
        """Every image with whether it is saved (and its label), and the first one not yet
        saved (None when all are)."""
        with self._lock:
            rows = [self._rows.get(item.image_cell) for item in self.items]
        return {"dataset": self.root.name, "count": len(self.items),
                "done": sum(row is not None for row in rows),
                "next": next((index for index, row in enumerate(rows) if row is None), None),
                "items": [{"index": index, "image_id": item.image_id, "saved": row is not None,
                           "label": (row or {}).get("label") or None}
                          for index, (item, row) in enumerate(zip(self.items, rows))]}

    def read(self, index: int) -> Image:
        """The image (its first frame), with its saved spacing where the row gives one (as
        training reads it), else the file's own."""
        image = read_image(self.items[index].path)
        saved = self.saved(index)
        if saved and saved["pixel_spacing_mm"]:
            image = image.with_spacing(tuple(saved["pixel_spacing_mm"]))
        return image

    def saved(self, index: int) -> dict[str, Any] | None:
        """What was saved for the image, as JSON, or None when it has not been."""
        with self._lock:
            row = self._rows.get(self.items[index].image_cell)
        if row is None:
            return None
        spacing = _spacing_cell(row.get("pixel_spacing_mm") or "")
        return {"label": row.get("label") or None, "patient_id": row.get("patient_id") or None,
                "pixel_spacing_mm": list(spacing) if spacing else None,
                "outline_source": row.get("outline_source") or None,
                "boxes": _boxes_cell(row.get("boxes") or "")}

    def save(self, index: int, label: str, patient_id: str | None,
             spacing_mm: tuple[float, float] | None, mask: np.ndarray, source: str,
             boxes: Sequence[Sequence[float]]) -> None:
        """Copy the image, write its mask (none for a normal image) and its manifest row,
        replacing any saved before; a one-line ValueError for a label that cannot be saved."""
        if label not in CLASS_NAMES:
            raise ValueError(f"label: choose one of {', '.join(CLASS_NAMES)}")
        if label in LESION_CLASSES and not mask.any():
            raise ValueError(f"a {label} image needs its lesion outlined: accept the model's "
                             "outline or draw a box around the lesion")
        item = self.items[index]
        with self._lock:
            earlier = self._rows.get(item.image_cell, {})
            earlier_mask = _own_mask(earlier.get("mask") or "")
            with open(item.path, "rb") as original, \
                    atomic_open(self.root / item.image_cell, "wb") as copy:
                shutil.copyfileobj(original, copy)
            mask_cell = ""
            if label in LESION_CLASSES:
                mask_cell = earlier_mask or self._new_mask_cell(item)
                save_png(self.root / mask_cell, mask)
            elif earlier_mask:  # now normal: its earlier mask (sonocad's) goes
                with contextlib.suppress(FileNotFoundError):
                    (self.root / earlier_mask).unlink()
            self._rows[item.image_cell] = {
                **earlier, "image": item.image_cell, "mask": mask_cell, "label": label,
                "patient_id": patient_id or "",
                "pixel_spacing_mm": "" if spacing_mm is None else str(spacing_text(spacing_mm)),
                "outline_source": source if label in LESION_CLASSES else "",
                "boxes": json.dumps([[round(v, 1) for v in box] for box in boxes],
                                    separators=(",", ":"))
                if label in LESION_CLASSES and source == "box" else ""}
            write_text(self.root / MANIFEST, _csv_text(self._columns, self._rows))

    def _new_mask_cell(self, item: Item) -> str:
        """masks/<id stem>.png, or with _2, _3, ... where another image's mask has that name
        ("a.png" and "a.jpg" in one folder)."""
        taken = {row.get("mask", "").casefold() for row in self._rows.values()}
        stem, number = output_stem(item.image_id), 1
        while True:
            cell = f"masks/{stem}{'' if number == 1 else f'_{number}'}.png"
            if cell.casefold() not in taken:
                return cell
            number += 1


def patient_text(text: str | None) -> str | None:
    """A patient id as typed (trimmed), or None; a one-line ValueError for one that is too
    long or holds control characters."""
    text = (text or "").strip()
    if len(text) > MAX_PATIENT_ID or not text.isprintable():
        raise ValueError(f"patient_id: at most {MAX_PATIENT_ID} printable characters")
    return text or None


def _read_manifest(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """(columns, rows by image cell) of an earlier annotation's manifest; none at first."""
    if not path.exists():
        return list(COLUMNS), {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = {row["image"]: row for row in reader if row.get("image")}
            columns = list(dict.fromkeys([*COLUMNS, *(reader.fieldnames or ())]))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SonocadError(f"{path}: cannot continue this annotation ({exc})") from None
    return columns, rows


def _own_mask(cell: str) -> str | None:
    """A manifest's mask cell as sonocad writes them (masks/..., relative, no ".."); None for
    any other, which is never written or removed through: a row edited by hand to name a file
    elsewhere cannot make a save touch it."""
    path = PurePosixPath(cell)
    if path.is_absolute() or not path.parts or path.parts[0] != "masks" or ".." in path.parts:
        return None
    return cell


def _spacing_cell(text: str) -> tuple[float, float] | None:
    """A manifest's spacing as written here ("0.1", "0.1 x 0.2"); None for none, or for one
    edited into something else (`sonocad data check` names it)."""
    try:
        return parse_spacing(text) if text.strip() else None
    except ValueError:
        return None


def _boxes_cell(text: str) -> list[list[float]]:
    try:
        boxes = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    return boxes if isinstance(boxes, list) else []


def _csv_text(columns: list[str], rows: dict[str, dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows[cell] for cell in sorted(rows))
    return buffer.getvalue()
