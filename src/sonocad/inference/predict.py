"""`sonocad predict`: masks, overlays, heatmaps and a predictions table for images on disk.

Inputs are image files, folders (searched recursively; hidden files and folders skipped, and
so are ``<stem>_mask*.png`` annotations beside their image ``<stem>.*``, as in BUSI) and glob
patterns; every frame of a DICOM cine loop is predicted. Outputs, all inside `out`:

  masks/<name>.png       predicted lesion at the image's own size, 0/255 (segmentation)
  overlays/<name>.png    the image with the predicted lesion outlined (segmentation), or with
                         the predicted class and its probability written on it (classification)
  heatmaps/<name>.png    lesion probability over the image (segmentation), or Grad-CAM of
                         the predicted class (classification, torch checkpoints)
  predictions.csv/.json  one row per image or frame

An image's id is its path relative to the folder or glob root it was found under, or its file
name when given as a file. <name> is the id without its suffix (so sub-folders are mirrored),
plus ``_frameNNN`` (from 001) for the frames of a multi-frame file; a name already taken gets
``_2``, ``_3``, ... Images stream through in batches, so memory does not grow with the number of
inputs. Unreadable files are reported on stderr, one line each, skipped, and listed in the
result's `failures`.
"""

from __future__ import annotations

import glob
import itertools
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont
from tqdm import tqdm

from sonocad.data.adapters import annotated_stem
from sonocad.engine.checkpoint import Checkpoint
from sonocad.errors import InputError, SonocadError
from sonocad.evaluation.measure import lesion_measurements
from sonocad.evaluation.table import write_predictions
from sonocad.explain.runner import Explainer
from sonocad.inference.decision import decision_columns
from sonocad.inference.predictor import Prediction, Predictor
from sonocad.io.atomic import save_png
from sonocad.io.images import Image, is_image_file, iter_frames
from sonocad.progress import progress
from sonocad.visual import PREDICTION_COLOUR, draw_outlines, heatmap, to_rgb8

OUTPUT_FOLDERS = ("masks", "overlays", "heatmaps")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class PredictResult:
    out_dir: Path
    rows: list[dict[str, Any]]  # the predictions table
    failures: list[InputError]  # inputs that could not be read (or not to the last frame)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class _Source:
    path: Path  # the file to read
    image_id: str  # relative to its input root, POSIX separators


@dataclass(frozen=True)
class _Item:
    source: _Source
    frame: int | None  # 1-based frame of a multi-frame file; None for a single image
    name: str  # output file name without suffix, unique in the run
    image: Image


@dataclass
class _Names:
    """Output names unique in a run, case-insensitively (macOS and Windows file systems)."""

    taken: set[str] = field(default_factory=set)

    def claim(self, base: str) -> str:
        name = base
        for n in itertools.count(2):
            if name.casefold() not in self.taken:
                break
            name = f"{base}_{n}"
        self.taken.add(name.casefold())
        return name


def predict(inputs: Sequence[str | Path], out: str | Path, *,
            checkpoint: str | Path | Checkpoint | None = None, backend: str = "torch",
            batch_size: int = 8) -> PredictResult:
    """Predict every image in `inputs`; write masks, overlays, heatmaps and the table to `out`.

    `checkpoint` None means the bundled default model; with ``backend="onnx"`` it may also be
    a ``.onnx`` file from `sonocad export`.
    """
    out = Path(out)
    if batch_size < 1:
        raise SonocadError(f"batch size must be at least 1, got {batch_size}")
    if out.exists() and not out.is_dir():
        raise InputError(out, "the output path exists and is not a folder")
    predictor = (Predictor.default(backend=backend) if checkpoint is None
                 else Predictor(checkpoint, backend=backend))
    # A classifier's heatmap is Grad-CAM, which needs the torch model (not an ONNX file).
    explainer = (Explainer(predictor) if predictor.task == "classification"
                 and predictor.checkpoint is not None else None)
    sources, failures = _collect_inputs(inputs, exclude=[out / f for f in OUTPUT_FOLDERS])
    for failure in failures:
        _report(failure)
    rows = []
    for batch in _batches(_items(sources, failures), batch_size):
        predictions = predictor.predict([item.image.pixels for item in batch])
        for item, prediction in zip(batch, predictions):
            _write_images(out, item, prediction, explainer)
            rows.append(_row(item, prediction))
    write_predictions(out / "predictions", rows)
    return PredictResult(out, rows, failures)


def _collect_inputs(inputs: Iterable[str | Path], *,
                    exclude: Sequence[Path] = ()) -> tuple[list[_Source], list[InputError]]:
    """The files to predict, each once, and an error for each input that matched nothing.

    Files under `exclude` (our own output folders, when ``--out`` is inside an input folder)
    are left out, so a second run does not predict the first run's masks.
    """
    excluded = [path.resolve() for path in exclude]
    sources, failures, seen = [], [], set()
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = _walk(path)
        elif path.exists() or not _GLOB_CHARACTERS & set(str(given)):
            found = [(path, path.name)]  # read anyway: a bad file is reported by name
        else:
            found = _glob(str(given))
        found = [(file, image_id) for file, image_id in found
                 if not any(folder in file.resolve().parents for folder in excluded)]
        if not found:
            failures.append(InputError(given, "no image files found"))
        for file, image_id in found:
            if file.resolve() not in seen:
                seen.add(file.resolve())
                sources.append(_Source(file, image_id))
    return sources, failures


def _walk(root: Path) -> list[tuple[Path, str]]:
    # Hidden entries are skipped: macOS "._x.png" files have image suffixes but hold no image.
    images = [p for p in root.rglob("*") if is_image_file(p)
              and not any(part.startswith(".") for part in p.relative_to(root).parts)]
    stems = {(p.parent, p.stem) for p in images}
    return sorted(((p, p.relative_to(root).as_posix()) for p in images
                   if (p.parent, annotated_stem(p)) not in stems), key=lambda found: found[1])


def _glob(pattern: str) -> list[tuple[Path, str]]:
    parts = Path(pattern).parts
    literal = list(itertools.takewhile(lambda part: not _GLOB_CHARACTERS & set(part), parts))
    root = Path(*literal) if literal else Path()
    matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    return [(p, p.relative_to(root).as_posix()) for p in matches if is_image_file(p)]


def _items(sources: list[_Source], failures: list[InputError]) -> Iterator[_Item]:
    """Every image and frame, named; a file that fails is reported, recorded and skipped."""
    names = _Names()
    for source in progress(sources, "predicting"):
        stem = str(PurePosixPath(source.image_id).with_suffix(""))
        try:
            for frame, image in _numbered_frames(source.path):
                name = stem if frame is None else f"{stem}_frame{frame:03d}"
                yield _Item(source, frame, names.claim(name), image)
        except InputError as exc:
            _report(exc)
            failures.append(exc)


def _numbered_frames(path: Path) -> Iterator[tuple[int | None, Image]]:
    """(None, image) for a single image; (1, frame), (2, frame), ... for a cine loop."""
    frames = iter_frames(path)
    first, second = next(frames, None), next(frames, None)
    if first is None:
        raise InputError(path, "file has no frames")
    if second is None:
        yield None, first
        return
    yield from enumerate(itertools.chain([first, second], frames), start=1)


def _batches(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _write_images(out: Path, item: _Item, prediction: Prediction,
                  explainer: Explainer | None) -> None:
    pixels, mask = item.image.pixels, prediction.mask
    if mask is not None:
        save_png(out / "masks" / f"{item.name}.png", mask)
        save_png(out / "heatmaps" / f"{item.name}.png",
                 heatmap(pixels, prediction.lesion_probability))
        overlay = draw_outlines(pixels, [(mask, PREDICTION_COLOUR)])
    else:
        overlay = to_rgb8(pixels)
        if explainer is not None:  # a classifier: the heatmap is Grad-CAM of its call
            heat = explainer(pixels, prediction).heat
            save_png(out / "heatmaps" / f"{item.name}.png", heatmap(pixels, heat))
    if prediction.class_probabilities:
        overlay = _caption(overlay, caption(prediction))
    save_png(out / "overlays" / f"{item.name}.png", overlay)


def caption(prediction: Prediction) -> str:
    """'malignant 0.91', or with a rule 'benign 0.38 (lesion outlined) · low confidence'."""
    label = prediction.final_class
    text = f"{label} {prediction.class_probabilities[label]:.2f}"
    decision = prediction.decision
    if decision is not None and decision.reason:
        text += f" ({decision.reason})"
    if decision is not None and decision.low_confidence:
        text += " · low confidence"
    return text


def _caption(canvas: np.ndarray, text: str) -> np.ndarray:
    """`text` in the top-left corner on a black box, sized to the image."""
    image = PILImage.fromarray(canvas)
    size = max(10, round(min(image.size) / 16))
    margin = max(2, size // 4)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=size)
    left, top, right, bottom = draw.textbbox((margin, margin), text, font=font)
    draw.rectangle((0, 0, right + margin, bottom + margin), fill=(0, 0, 0))
    draw.text((margin, margin), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def _row(item: _Item, prediction: Prediction) -> dict[str, Any]:
    image = item.image
    row: dict[str, Any] = {"image_id": item.source.image_id, "frame": item.frame,
                           "file": str(item.source.path), "output_name": item.name,
                           "width": image.width, "height": image.height}
    if prediction.class_probabilities:
        row.update({f"prob_{name}": p for name, p in prediction.class_probabilities.items()})
        row["predicted_class"] = prediction.predicted_class
        row.update(decision_columns(prediction.decision))
    mask = prediction.mask
    if mask is not None:
        sizes = lesion_measurements(mask, image.spacing_mm)
        row.update(lesion_detected=int(mask.any()), lesion_area_px=sizes["area_px"],
                   lesion_area_mm2=sizes["area_mm2"], lesion_diameter_px=sizes["diameter_px"],
                   lesion_diameter_mm=sizes["diameter_mm"])
    return row


def _report(error: InputError) -> None:
    # tqdm.write keeps a running progress bar intact.
    tqdm.write(f"sonocad: skipped {error}", file=sys.stderr)
