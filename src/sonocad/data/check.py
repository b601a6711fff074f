"""`sonocad data check`: what a dataset holds and everything wrong with it, file by file.

Errors stop training (unreadable files, masks of another size, unknown labels, lesion images
without a mask, masks that mark more than `MAX_LESION_FRACTION` of their image, masks that fit
their image only before EXIF orientation turns one of them upright); warnings are quality
problems a user should know (empty or non-binary masks, an image and its mask with different
EXIF orientations, duplicates, the same scan under two labels). Every problem names its file.
Masks are read as training reads them (`Sample.load_mask`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags
from PIL import Image as PILImage

from sonocad.data.duplicates import ImageHashes, find_duplicate_groups, hash_image
from sonocad.data.sample import CLASS_NAMES, LESION_CLASSES, Sample
from sonocad.errors import InputError
from sonocad.io.annotations import MaskFormat, MaskSizeError

# A lesion outline filling its whole frame covers at most about pi/4 = 79 % of it (an ellipse);
# the largest of BUSI's and BUS-BRA's 2,655 masks cover 56 % and 58 %. A mask over this is no
# outline: all white, or a grey or white background that reads as lesion.
MAX_LESION_FRACTION = 0.9
_RASTER_MASKS = (MaskFormat.BINARY, MaskFormat.VOC)  # mask images, with EXIF orientations
_TURNED = frozenset({5, 6, 7, 8})  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    path: str
    message: str


@dataclass
class CheckReport:
    root: str
    n_images: int
    class_counts: dict[str, int]
    scanner_counts: dict[str, int]
    n_patients: int | None  # None when the data set names no patients
    images_per_patient: dict[int, int]  # images per patient -> number of such patients
    extra_masks_merged: int
    width_range: tuple[int, int] | None
    height_range: tuple[int, int] | None
    problems: list[Problem] = field(default_factory=list)
    duplicate_groups: list[dict] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["n_errors"], out["n_warnings"] = len(self.errors), len(self.warnings)
        return out


def check_dataset(root: str | Path, samples: list[Sample],
                  progress: Callable[[Iterable], Iterable] = iter) -> CheckReport:
    """Read every image and mask once; collect sizes, problems and duplicate groups."""
    problems: list[Problem] = []
    sizes: list[tuple[int, int]] = []
    readable: list[Sample] = []
    hashes: dict[str, ImageHashes] = {}
    for sample in progress(samples):
        pixels, sample_problems = _check_sample(sample)
        problems.extend(sample_problems)
        if pixels is not None:
            sizes.append(pixels.shape[:2])
            readable.append(sample)
            hashes[sample.image_id] = hash_image(pixels)  # while the pixels are in memory
    groups = find_duplicate_groups(readable, hashes=hashes)
    for group in groups:
        if group.cross_label:
            problems.append(Problem("warning", group.image_ids[0],
                                    f"same scan under labels {', '.join(group.labels)}: "
                                    f"{', '.join(group.image_ids)}"))
    heights, widths = ([s[0] for s in sizes], [s[1] for s in sizes]) if sizes else ([], [])
    per_patient = Counter(s.patient_id for s in samples if s.patient_id)
    return CheckReport(
        root=str(root),
        n_images=len(samples),
        class_counts=_counts(s.label or "unlabelled" for s in samples),
        scanner_counts=_counts(s.scanner or "unknown" for s in samples),
        n_patients=len(per_patient) or None,
        images_per_patient=dict(sorted(Counter(per_patient.values()).items())),
        extra_masks_merged=sum(max(len(s.mask_paths) - 1, 0) for s in samples),
        width_range=(min(widths), max(widths)) if widths else None,
        height_range=(min(heights), max(heights)) if heights else None,
        problems=problems,
        duplicate_groups=[group.to_dict() for group in groups],
    )


def _counts(values: Iterable[str]) -> dict[str, int]:
    return dict(sorted(Counter(values).items()))


def _check_sample(sample: Sample) -> tuple[np.ndarray | None, list[Problem]]:
    """The image's pixels (None when unreadable) and the sample's problems."""
    problems: list[Problem] = []
    where = str(sample.image_path)
    if sample.label is not None and sample.label not in CLASS_NAMES:
        problems.append(Problem("error", where, f"unknown label {sample.label!r} "
                                                f"(known: {', '.join(CLASS_NAMES)})"))
    try:
        image = sample.load_image()
    except InputError as exc:
        return None, [*problems, Problem("error", str(exc.path), exc.problem)]
    pixels = image.pixels
    if not sample.mask_paths:
        if sample.label in LESION_CLASSES:
            problems.append(Problem("error", where, f"missing mask for a {sample.label} image"))
        return pixels, problems
    try:
        mask = sample.load_mask(pixels.shape[:2])
    except InputError as exc:
        # A mask that fits its image only as stored fails for its size: say why, in one line.
        turned = (_orientation_problems(sample, [exc.path]) if isinstance(exc, MaskSizeError)
                  else [])
        explained = [p for p in turned if p.severity == "error"]
        return pixels, [*problems, *(explained or [Problem("error", str(exc.path), exc.problem)])]
    problems.extend(_orientation_problems(sample, sample.mask_paths))
    if sample.label in LESION_CLASSES and not mask.any():
        problems.append(Problem("warning", where, f"empty mask in a {sample.label} image"))
    # The mask files read cleanly through `load_mask`, so opening them again cannot fail.
    levels = ({path: _grey_levels(path) for path in sample.mask_paths}
              if sample.mask_format is MaskFormat.BINARY else {})
    for path, counts in levels.items():
        if len(counts) > 2:
            problems.append(Problem("warning", str(path), f"non-binary mask ({len(counts)} grey "
                                    "levels); any non-zero pixel is taken as lesion"))
    if (share := float(mask.mean())) > MAX_LESION_FRACTION:
        problems.append(_coverage_problem(sample, share, levels))
    return pixels, problems


def _grey_levels(mask_path: Path) -> Counter[int]:
    """How many pixels have each grey level (colours taken to grey, alpha left out)."""
    with PILImage.open(mask_path) as img:
        values, counts = np.unique(np.asarray(img.convert("L")), return_counts=True)
    return Counter(dict(zip(values.tolist(), counts.tolist())))


def _coverage_problem(sample: Sample, share: float,
                      levels: dict[Path, Counter[int]]) -> Problem:
    """An error on the mask (or, for several masks, their image) marking most of the image."""
    message = f"mask marks {share:.0%} of the image as lesion, more than any lesion outline"
    if len(sample.mask_paths) > 1:
        return Problem("error", str(sample.image_path),
                       f"its {len(sample.mask_paths)} masks together: {message}")
    path = sample.mask_paths[0]
    if path in levels and (commonest := levels[path].most_common(1)[0][0]) != 0:
        message += f"; its commonest grey level is {commonest}, not 0 (background)"
    return Problem("error", str(path), message)


@dataclass(frozen=True)
class _Stored:
    """What a file's header says of its pixels as stored, before EXIF orientation applies."""

    orientation: int  # the EXIF orientation tag; 1 (upright) when there is none
    size: tuple[int, int]  # width, height

    @property
    def upright_size(self) -> tuple[int, int]:
        return self.size[::-1] if self.orientation in _TURNED else self.size


def _stored(path: Path) -> _Stored | None:
    """For a file already read whole: None where Pillow cannot open it (a DICOM image, say)."""
    try:
        with PILImage.open(path) as image:
            # Pillow decodes a whole PNG to look for EXIF after its pixel data; the chunks
            # before it (where writers put EXIF) are read already, so look there only.
            exif = PILImage.Image.getexif(image) if image.format == "PNG" else image.getexif()
            orientation = exif.get(ExifTags.Base.Orientation, 1)
            return _Stored(orientation if orientation in range(1, 9) else 1, image.size)
    except (OSError, SyntaxError, ValueError):  # not Pillow's, or EXIF it cannot parse
        return None


def _orientation_problems(sample: Sample, masks: Sequence[Path]) -> list[Problem]:
    """Masks (read already) whose EXIF orientation differs from their image's: an error where
    the mask fits the image only as stored (its upright size does not), else a warning."""
    if sample.mask_format not in _RASTER_MASKS or (image := _stored(sample.image_path)) is None:
        return []
    problems = []
    for path in masks:
        mask = _stored(path)
        if mask is None or mask.orientation == image.orientation:
            continue
        tags = f"EXIF orientation {image.orientation} on the image, {mask.orientation} on the mask"
        if mask.size == image.size and mask.upright_size != image.upright_size:
            problems.append(Problem("error", str(path), f"mask fits its image only as stored, "
                                    f"not upright ({tags}); save it upright or with the image's "
                                    "orientation"))
        elif mask.upright_size == image.upright_size:
            problems.append(Problem("warning", str(path), f"{tags}: both are read upright, so "
                                    "the mask lines up only if it was drawn on the upright image"))
    return problems


def format_report(report: CheckReport) -> str:
    """The human summary printed by `sonocad data check`."""
    lines = [f"{report.root}: {report.n_images} images"]
    lines.append("  classes: " + ", ".join(f"{k} {v}" for k, v in report.class_counts.items()))
    lines.append("  scanners: " + ", ".join(f"{k} {v}" for k, v in report.scanner_counts.items()))
    if report.n_patients:
        spread = ", ".join(f"{n} with {k}" for k, n in report.images_per_patient.items())
        lines.append(f"  patients: {report.n_patients} (images per patient: {spread})")
    else:
        lines.append("  patients: not named (each image is its own unit in splits)")
    if report.width_range and report.height_range:
        lines.append(f"  width {report.width_range[0]}-{report.width_range[1]} px, "
                     f"height {report.height_range[0]}-{report.height_range[1]} px")
    lines.append("  extra masks merged into their image's lesion mask: "
                 f"{report.extra_masks_merged}")
    exact = sum(1 for g in report.duplicate_groups if g["exact"])
    images_in_groups = sum(len(g["image_ids"]) for g in report.duplicate_groups)
    lines.append(f"  duplicate groups: {len(report.duplicate_groups)} ({exact} exact, "
                 f"{len(report.duplicate_groups) - exact} near), {images_in_groups} images; "
                 f"{sum(1 for g in report.duplicate_groups if g['cross_label'])} span two labels")
    lines.append(f"  problems: {len(report.errors)} errors, {len(report.warnings)} warnings")
    for problem in report.problems:
        lines.append(f"  {problem.severity}: {problem.path}: {problem.message}")
    return "\n".join(lines)
