"""`sonocad predict`: masks, overlays, heatmaps and a predictions table for images on disk.

Inputs are image files, folders (searched recursively) and glob patterns; every frame of a
DICOM cine loop or multi-page TIFF is predicted. A folder walk leaves out what is not a scan:
hidden files and folders, annotations (``<stem>_mask*.png`` files as in BUSI, VOC's
``SegmentationClass/`` and ``SegmentationObject/``, a ``masks/`` folder beside ``images/``) and
sonocad's own output folders; it names anything else it cannot read. Outputs, all in `out`:

  masks/<name>.png       predicted lesion at the image's own size, 0/255 (segmentation; a
                         detector's: the union of its found instances)
  overlays/<name>.png    the image with the predicted lesion outlined (segmentation), or with
                         the predicted class and its probability written on it (classification),
                         or each found instance outlined in its box with class and score
                         (detection)
  heatmaps/<name>.png    lesion probability over the image (segmentation), Grad-CAM of the
                         predicted class (classification, torch checkpoints), or the score of
                         the instances covering each pixel (detection)
  predictions.csv/.json  one row per image or frame
  provenance.json        the model (name, file, SHA-256), back end, version, command line

`out` is claimed through `sonocad.io.outputs` (a new or empty folder, or an earlier predict
output with ``overwrite`` / ``resume``; never a folder that holds an input). The table is
streamed: each input's rows reach predictions.csv, flushed, as soon as all its frames are done,
so a killed run leaves a valid partial table, and ``resume`` predicts only the inputs not in it.

An image's id is its path relative to the folder or glob root it was found under, its file
name when given as a file, or its manifest cell. <name> is the id without its suffix (so
sub-folders are mirrored) made safe by `sonocad.io.outputs.output_stem` (no root, no ``..``:
an absolute or climbing id still lands inside `out`; long names cut with a stable hash), plus
``_frameNNN`` (from 001) for the frames of a multi-frame file; a name already taken gets
``_2``, ``_3``, ... Images stream through in batches, so memory does not grow with the number of
inputs. Unreadable files, and images whose model output is not finite (a damaged model makes
no call), are reported on stderr, one line each, skipped, and listed in the result's
`failures`.
"""

from __future__ import annotations

import glob
import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from sonocad.data.adapters import annotated_stem, read_manifest
from sonocad.errors import InputError, SonocadError
from sonocad.inference.predictor import NonFiniteOutput, Predictor, natural_backend
from sonocad.io.images import IMAGE_SUFFIXES, is_dicom, is_image_file, numbered_frames
from sonocad.io.outputs import MARKER, UniqueNames, claim_output_dir, output_stem
from sonocad.io.pixels import MAX_IMAGE_PIXELS, Image
from sonocad.io.spacing import resolve_spacing, spacing_text
from sonocad.predictions import Prediction, PredictionsStream, prediction_columns
from sonocad.progress import progress
from sonocad.provenance import predictor_record, write_provenance
from sonocad.workflows.writer import OUTPUTS, OutputWriter

if TYPE_CHECKING:  # at run time only for checkpoints: torch
    from sonocad.checkpoint import Checkpoint
    from sonocad.explain.runner import Explainer

OUTPUT_FOLDERS = ("masks", "overlays", "heatmaps")
_GLOB_CHARACTERS = frozenset("*?[")
_ANNOTATION_FOLDERS = frozenset({"segmentationclass", "segmentationobject"})


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
    spacing_mm: tuple[float, float] | None = None  # from a CSV manifest's row
    patient_id: str | None = None  # likewise


@dataclass(frozen=True)
class _Item:
    source: _Source
    frame: int | None  # 1-based frame of a multi-frame file; None for a single image
    name: str  # output file name without suffix, unique in the run
    image: Image  # with the spacing the measurements use
    spacing_source: str | None  # where that spacing came from (`io.spacing.SPACING_SOURCES`)


def predict(inputs: Sequence[str | Path], out: str | Path, *,
            checkpoint: str | Path | Checkpoint | None = None, backend: str | None = None,
            batch_size: int = 8, overwrite: bool = False, resume: bool = False,
            outputs: Iterable[str] = OUTPUTS, picture_format: str = "png",
            spacing_mm: tuple[float, float] | None = None,
            dicom_out: bool = False) -> PredictResult:
    """Predict every image in `inputs`; write masks, overlays, heatmaps and the table to `out`.

    `checkpoint` None means the bundled default model (on ONNX Runtime where it is installed,
    without torch); with ``backend="onnx"`` it may also be a ``.onnx`` file from `sonocad
    export`. `backend` None: onnx for a ``.onnx`` file, torch for a checkpoint. `overwrite`
    replaces an earlier predict output in `out`; `resume` continues it, predicting only the
    inputs its table does not have yet. `outputs` chooses among mask, overlay, heatmap and
    table; `picture_format` is "png" (lossless) or "jpeg" for overlays and heatmaps.
    `spacing_mm` (row, column mm per pixel) sizes the lesions of images whose file and manifest
    row give no spacing. `dicom_out` adds a DICOM Segmentation and Structured Report of each
    DICOM input to ``out/dicom``.
    """
    out, outputs = Path(out), frozenset(outputs)
    if batch_size < 1:
        raise SonocadError(f"batch size must be at least 1, got {batch_size}")
    if resume and "table" not in outputs:
        raise SonocadError("--resume reads the predictions table: keep 'table' in --outputs")
    if out.exists() and not out.is_dir():
        raise InputError(out, "the output path exists and is not a folder")
    predictor = (Predictor.default(backend=backend) if checkpoint is None
                 else Predictor(checkpoint, backend=backend or natural_backend(checkpoint)))
    sources, failures = collect_inputs(inputs)
    folders = [Path(given) for given in inputs if Path(given).is_dir()]
    claim_output_dir(out, "predict", inputs=[*folders, *(source.path for source in sources)],
                     overwrite=overwrite, resume=resume)
    if dicom_out and not predictor.task.lesion_map:
        raise SonocadError("--dicom-out writes a Segmentation: the model must outline lesions")
    explainer = _grad_cam(predictor) if "heatmap" in outputs else None
    write_provenance(out, [predictor_record(predictor, checkpoint)], predictor.backend)
    for failure in failures:
        _report(failure)
    table = PredictionsStream(out / "predictions", resume=resume) if "table" in outputs else None
    earlier = table.earlier if table is not None else []
    done = {row["file"] for row in earlier}
    names = UniqueNames({str(row["output_name"]).casefold() for row in earlier})
    items = _items([s for s in sources if str(s.path) not in done], failures, names,
                   spacing_mm)
    rows: list[dict[str, Any]] = list(earlier)
    with OutputWriter(out, table, outputs=outputs, picture_format=picture_format) as writer:
        dicom = _DicomResults(out / "dicom", writer, failures) if dicom_out else None
        for batch in _batches(items, batch_size):
            predictions = predictor.predict_images([item.image for item in batch])
            for item, prediction in zip(batch, predictions):
                if isinstance(prediction, NonFiniteOutput):  # no call is made of NaN
                    failure = InputError(item.source.path, str(prediction) if item.frame is None
                                         else f"frame {item.frame}: {prediction}")
                    _report(failure)
                    failures.append(failure)
                    continue
                heat = explainer(item.image.pixels, prediction).heat if explainer else None
                rows.append(_row(item, prediction))
                if dicom is not None:
                    dicom.add(item, prediction.mask, rows[-1])
                writer.submit(item.name, str(item.source.path), item.image.pixels, prediction,
                              rows[-1], item.image.spacing_mm, heat)
        if dicom is not None:
            dicom.finish()
    return PredictResult(out, rows, failures)


@dataclass
class _DicomResults:
    """The masks and rows of the DICOM input being predicted; once its last frame is in, its
    SEG and SR are written as one more job of that input (its rows wait for them)."""

    folder: Path
    writer: OutputWriter
    failures: list[InputError]
    source: _Source | None = None
    name: str = ""
    masks: list[Any] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, item: _Item, mask: Any, row: dict[str, Any]) -> None:
        if item.source is not self.source:
            self.finish()
            if not is_dicom(item.source.path):
                return
            self.source, self.name = item.source, item.name.removesuffix("_frame001")
        self.masks.append(mask)
        self.rows.append(row)

    def finish(self) -> None:
        if self.source is not None:
            source, masks, rows, name = self.source.path, self.masks, self.rows, self.name
            self.writer.submit_after(str(source), lambda: self._write(source, masks, rows, name))
        self.source, self.masks, self.rows = None, [], []

    def _write(self, source: Path, masks: list[Any], rows: list[dict[str, Any]],
               name: str) -> None:
        from sonocad.workflows.dicom_out import write_dicom_results  # highdicom: on use

        try:
            write_dicom_results(source, masks, rows, self.folder, name)
        except InputError as exc:  # the predictions stand; only the DICOM objects are missing
            _report(exc)
            self.failures.append(exc)


def _grad_cam(predictor: Predictor) -> Explainer | None:
    """A classifier's Grad-CAM explainer (`explain.runner.grad_cam_explainer`), imported only
    then: it brings torchvision, a second of start-up."""
    if predictor.task.lesion_map or not predictor.task.class_scores:
        return None
    from sonocad.explain import runner

    return runner.grad_cam_explainer(predictor)


def collect_inputs(inputs: Iterable[str | Path]) -> tuple[list[_Source], list[InputError]]:
    """The files to predict, each once, and an error for each input that matched nothing or
    cannot be a scan (a FIFO, a broken link, a link loop)."""
    sources, failures, seen = [], [], set()
    for given in inputs:
        path = Path(given)
        try:
            if path.suffix.lower() == ".csv" and path.is_file():
                sources += _manifest_sources(path, seen)
                continue
            if path.is_dir():
                found, skipped = _walk(path)
                failures += skipped
            elif path.exists() or path.is_symlink() or not _GLOB_CHARACTERS & set(str(given)):
                found = [(path, path.name)]  # read anyway: a bad file is reported by name
            else:
                found = _glob(str(given))
            if not found and not path.is_file():
                failures.append(InputError(given, "no image files found"))
            for file, image_id in found:
                key = file.resolve()
                if key not in seen:
                    seen.add(key)
                    sources.append(_Source(file, image_id))
        except (OSError, RuntimeError) as exc:  # RuntimeError: pathlib's "Symlink loop"
            failures.append(InputError(given, f"cannot follow the path ({_reason(exc)})"))
        except InputError as exc:  # a manifest that cannot be read: the others carry on
            failures.append(exc)
    return sources, failures


def _manifest_sources(csv_path: Path, seen: set[Path]) -> list[_Source]:
    """A CSV manifest's images (image column, relative to the CSV), with each row's spacing
    and patient id; the manifest's other columns are not needed to predict."""
    sources = []
    for sample in read_manifest(csv_path):
        key = sample.image_path.resolve()
        if key not in seen:
            seen.add(key)
            sources.append(_Source(sample.image_path, sample.image_id, sample.pixel_spacing_mm,
                                   sample.patient_id))
    return sources


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _root(given: str | Path) -> Path:
    """The folder a glob pattern searches under, or the path itself."""
    parts = Path(given).parts
    literal = list(itertools.takewhile(lambda part: not _GLOB_CHARACTERS & set(part), parts))
    return Path(*literal) if len(literal) < len(parts) else Path(given)


def _walk(root: Path) -> tuple[list[tuple[Path, str]], list[InputError]]:
    """Scans under `root`, sorted by id, and an error for each image-named entry that is not a
    readable file. Hidden entries are left out: macOS "._x.png" files hold no image."""
    found: list[tuple[Path, str]] = []
    skipped: list[InputError] = []

    def unreadable(error: OSError) -> None:
        skipped.append(InputError(error.filename, f"cannot read folder ({_reason(error)})"))

    for folder, subfolders, files in os.walk(root, onerror=unreadable):
        here = Path(folder)
        names = {name.casefold() for name in subfolders}
        subfolders[:] = sorted(name for name in subfolders if not name.startswith(".")
                               and not _is_annotation_folder(name, names)
                               and not (here / name / MARKER).exists())
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or annotated_stem(path) is not None:
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.is_file():
                skipped.append(InputError(path, "not a regular file (a FIFO, device or broken "
                                                "link): skipped"))
            elif is_image_file(path):
                found.append((path, path.relative_to(root).as_posix()))
    return sorted(found, key=lambda item: item[1]), skipped


def _is_annotation_folder(name: str, siblings: set[str]) -> bool:
    folded = name.casefold()
    return folded in _ANNOTATION_FOLDERS or (folded == "masks" and "images" in siblings)


def _glob(pattern: str) -> list[tuple[Path, str]]:
    root = _root(pattern)
    matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    return [(p, p.relative_to(root).as_posix()) for p in matches
            if is_image_file(p) and not _in_output_folder(p, root)]


def _in_output_folder(path: Path, root: Path) -> bool:
    """True for a file sonocad wrote: under a folder with an output marker, below `root`."""
    return any((folder / MARKER).exists() for folder in path.parents
               if folder != root and root in folder.parents)


def _items(sources: list[_Source], failures: list[InputError], names: UniqueNames,
           spacing_mm: tuple[float, float] | None = None) -> Iterator[_Item]:
    """Every image and frame, named; a file that fails is reported, recorded and skipped.
    `spacing_mm` (``--spacing``) applies where neither the file nor a manifest gives one."""
    for source in progress(sources, "predicting", unit="files"):
        stem = output_stem(source.image_id)
        try:
            for frame, image in _numbered_frames(source):
                name = stem if frame is None else f"{stem}_frame{frame:03d}"
                image, origin = _with_spacing(image, source, spacing_mm)
                yield _Item(source, frame, names.claim(name), image, origin)
        except InputError as exc:
            _report(exc)
            failures.append(exc)


def _numbered_frames(source: _Source) -> Iterator[tuple[int | None, Image]]:
    """`numbered_frames`, with a progress of their own for the frames of a cine loop or a
    multi-page TIFF: the files' progress moves only when a whole file is done (a 120-frame loop
    showed "predicting 1/1" throughout)."""
    frames = numbered_frames(source.path)
    first = next(frames)  # numbered_frames yields at least once, or raises
    if first[0] is None:
        yield first
        return
    total = None  # unknown for a TIFF: its pages are counted as they are read
    if is_dicom(source.path):
        from sonocad.io.dicom import dicom_frame_count  # pydicom: on use, as sonocad.io.images

        total = dicom_frame_count(source.path)
    yield from progress(itertools.chain([first], frames), f"frames of {source.image_id}", total,
                          unit="frames")


def _with_spacing(image: Image, source: _Source, option: tuple[float, float] | None
                  ) -> tuple[Image, str | None]:
    """The image with the spacing `resolve_spacing` gives it, and where that came from."""
    spacing, origin = resolve_spacing(image.spacing_mm, source.spacing_mm, option)
    return image.with_spacing(spacing), origin


def _batches(items: Iterable[_Item], size: int) -> Iterator[list[_Item]]:
    """Up to `size` items, and no more pixels than one image at the limit may have: a batch
    of eight 4096 x 4096 images would take 2.4 GB where one takes 1.6 GB."""
    batch: list[_Item] = []
    pixels = 0
    for item in items:
        if batch and (len(batch) == size or pixels + item.image.height * item.image.width
                      > MAX_IMAGE_PIXELS):
            yield batch
            batch, pixels = [], 0
        batch.append(item)
        pixels += item.image.height * item.image.width
    if batch:
        yield batch


def _row(item: _Item, prediction: Prediction) -> dict[str, Any]:
    """Where the image (or frame) came from, then the model's columns (`sonocad.predictions`)."""
    image = item.image
    return {"image_id": item.source.image_id, "patient_id": item.source.patient_id,
            "frame": item.frame, "file": str(item.source.path), "output_name": item.name,
            "width": image.width, "height": image.height,
            "spacing_mm": spacing_text(image.spacing_mm), "spacing_source": item.spacing_source,
            **prediction_columns(prediction, image.spacing_mm)}


def _report(error: InputError) -> None:
    # tqdm.write keeps a running progress bar intact.
    tqdm.write(f"sonocad: skipped {error}", file=sys.stderr)
