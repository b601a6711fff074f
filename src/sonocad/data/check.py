"""`sonocad data check`: what a dataset holds and everything wrong with it, file by file.

Errors stop training (unreadable files, masks of another size, unknown labels, lesion images
without a mask); warnings are quality problems a user should know (empty or non-binary masks,
duplicates, the same scan under two labels). Every problem names its file.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from sonocad.data.duplicates import ImageHashes, find_duplicate_groups, hash_image
from sonocad.data.sample import CLASS_NAMES, Sample
from sonocad.errors import InputError
from sonocad.io.annotations import MaskFormat

LESION_CLASSES = ("benign", "malignant")


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
        return pixels, [*problems, Problem("error", str(exc.path), exc.problem)]
    if sample.label in LESION_CLASSES and not mask.any():
        problems.append(Problem("warning", where, f"empty mask in a {sample.label} image"))
    if sample.mask_format is MaskFormat.BINARY:
        for path in sample.mask_paths:
            if (levels := _grey_levels(path)) > 2:
                problems.append(Problem("warning", str(path), f"non-binary mask ({levels} grey "
                                        "levels); any non-zero pixel is taken as lesion"))
    return pixels, problems


def _grey_levels(mask_path: Path) -> int:
    # The mask already read cleanly through `load_mask`, so opening it again cannot fail.
    with PILImage.open(mask_path) as img:
        return len(np.unique(np.asarray(img.convert("L"))))


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
