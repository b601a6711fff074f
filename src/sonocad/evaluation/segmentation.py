"""Segmentation metrics per image, the pooled pixel confusion matrix, and summaries over images.

The reduction is always explicit (as in segmentation_models_pytorch):

- per image: ``image_metrics`` gives one row per image and ``summarise`` averages the rows over
  images, with percentile-bootstrap CIs;
- pooled: ``pooled_confusion`` sums pixel counts over all images; ``PixelCounts.matrix`` is the
  2x2 table for reports and ``overlap_metrics`` on the sum gives dataset-level ("micro") values.

Masks are 2-D bool arrays, True = lesion. Spacing is (row, column) in mm per pixel, the order of
``Sample.pixel_spacing_mm`` and DICOM PixelSpacing.

Empty masks (BUSI "normal" images have no lesion). A ratio whose denominator is zero is
undefined and is NaN, so ``summarise`` leaves it out of the mean and counts it in
``n_excluded``. The one exception is Dice/IoU when both masks are empty:

    case                      dice, iou   precision   recall   specificity   hd95
    both empty                1           NaN         NaN      1             NaN
    truth empty, pred not     0           0           NaN      < 1           NaN
    truth not, pred empty     0           NaN         0        1             NaN

- Dice and IoU measure agreement, and agreeing that there is no lesion is exact agreement. So
  normal images enter the Dice mean symmetrically: silence scores 1, a false alarm 0. This is
  MONAI's ``DiceMetric(ignore_empty=False)`` and the smoothing of our Dice loss. For lesion-only
  means, filter the rows on ``truth_area_px > 0`` before ``summarise``.
- Precision and recall keep their meaning ("of what was predicted / of the lesion, how much was
  right"); scoring them 1 on empty images would fold normal-image detection into a
  boundary-quality mean. ``specificity`` is NaN only when the truth covers the whole image.
- HD95 needs a boundary on both sides; with one missing it is undefined. Tools that substitute
  the image diagonal invent a number; the miss already shows as Dice 0 and in ``n_excluded``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage

from sonocad.evaluation.bootstrap import bootstrap_ci
from sonocad.evaluation.intervals import (
    MetricSummary,
    metric_summary,
    proportion_interval,
    spread_interval,
)

# The per-image metrics `image_metrics` returns, in report order.
SEGMENTATION_METRICS = ("dice", "iou", "precision", "recall", "specificity", "pixel_accuracy",
                        "hd95_px", "hd95_mm")

# 4-connected neighbourhood: a pixel is on the boundary when a 4-neighbour is background or off
# the image (binary_erosion's border_value=0), as in medpy's hd95.
_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class PixelCounts:
    """Pixel confusion counts for the lesion class."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    def matrix(self, normalize: Literal["true", "pred", "all"] | None = None) -> np.ndarray:
        """2x2 table in scikit-learn's layout: rows truth, columns prediction, (background, lesion).

        ``normalize`` follows sklearn.metrics.confusion_matrix: "true" divides each row by its
        sum, "pred" each column, "all" the whole table; an empty row or column gives NaN.
        """
        counts = np.array([[self.tn, self.fp], [self.fn, self.tp]], dtype=np.int64)
        if normalize is None:
            return counts
        axis = {"true": 1, "pred": 0, "all": None}[normalize]
        with np.errstate(invalid="ignore", divide="ignore"):
            return counts / counts.sum(axis=axis, keepdims=True)


def confusion(truth: np.ndarray, pred: np.ndarray) -> PixelCounts:
    """Pixel counts of one image's predicted mask against its true mask."""
    _check_masks(truth, pred)
    tp = int(np.count_nonzero(truth & pred))
    fp = int(np.count_nonzero(pred)) - tp
    fn = int(np.count_nonzero(truth)) - tp
    return PixelCounts(tp, fp, fn, truth.size - tp - fp - fn)


def pooled_confusion(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> PixelCounts:
    """Pixel counts summed over (truth, pred) pairs: every pixel of the data set weighs the same."""
    return sum((confusion(truth, pred) for truth, pred in pairs), PixelCounts(0, 0, 0, 0))


def overlap_metrics(counts: PixelCounts) -> dict[str, float]:
    """Ratio metrics from pixel counts, with the module's empty-mask conventions."""
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    both_empty = tp + fp + fn == 0
    return {
        "pixel_accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }


def hd95(
    truth: np.ndarray, pred: np.ndarray, spacing_mm: tuple[float, float] | None = None
) -> float:
    """95th percentile of the symmetric boundary-to-boundary distances (medpy's hd95).

    Distances from each mask's boundary pixels to the other's boundary, both directions pooled,
    in pixels, or in mm when ``spacing_mm`` is given. NaN when either mask is empty. MONAI's
    HausdorffDistanceMetric(percentile=95) differs: it takes the larger of the two directed
    95th percentiles instead of pooling them.
    """
    _check_masks(truth, pred)
    if spacing_mm is not None and not (
        len(spacing_mm) == 2 and all(np.isfinite(s) and s > 0 for s in spacing_mm)
    ):
        raise ValueError(f"spacing_mm must be two positive numbers (row, column), got {spacing_mm}")
    if not truth.any() or not pred.any():
        return float("nan")
    truth_edge, pred_edge = _boundary(truth), _boundary(pred)
    distances = np.concatenate(
        [
            _distances_to(truth_edge, pred_edge, spacing_mm),
            _distances_to(pred_edge, truth_edge, spacing_mm),
        ]
    )
    return float(np.percentile(distances, 95))


def image_metrics(
    truth: np.ndarray, pred: np.ndarray, spacing_mm: tuple[float, float] | None = None
) -> dict[str, float]:
    """All per-image metrics of one predicted mask; hd95_mm is NaN without spacing."""
    counts = confusion(truth, pred)
    return {
        **overlap_metrics(counts),
        "hd95_px": hd95(truth, pred),
        "hd95_mm": float("nan") if spacing_mm is None else hd95(truth, pred, spacing_mm),
        "truth_area_px": float(counts.tp + counts.fn),
    }


def summarise(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    group_by: str | None = None,
) -> dict[str, MetricSummary]:
    """Mean over rows of each metric, NaN left out, with a percentile-bootstrap CI.

    Rows are images; with ``group_by`` (a row key such as "patient_id") the bootstrap resamples
    whole groups, because images of one patient are not independent. A metric whose values are
    all 0 or 1 is a proportion and takes `sonocad.evaluation.intervals`' rule for one (exact
    where the counts are small); any other has no CI where the bootstrap's has zero width.
    """
    groups = None if group_by is None else [row[group_by] for row in rows]
    summary: dict[str, MetricSummary] = {}
    for name in metrics:
        # None (a missing value read back from a table) becomes NaN.
        values = np.array([row[name] for row in rows], dtype=float)
        kept = values[~np.isnan(values)]
        low, high = bootstrap_ci(values, ci=ci, n_boot=n_boot, seed=seed, groups=groups)
        if kept.size and np.isin(kept, (0.0, 1.0)).all():
            interval = proportion_interval(int(kept.sum()), kept.size, low, high, ci)
        else:
            interval = spread_interval(low, high)
        summary[name] = metric_summary(float(kept.mean()) if kept.size else float("nan"),
                                       interval, kept.size, values.size - kept.size)
    return summary


def _check_masks(truth: np.ndarray, pred: np.ndarray) -> None:
    # Bool only: a probability map or a 0/255 mask passed by mistake must fail, not be guessed at.
    for name, mask in (("truth", truth), ("pred", pred)):
        if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.ndim != 2:
            raise ValueError(f"{name} must be a 2-D bool array (threshold it first)")
    if truth.shape != pred.shape:
        raise ValueError(f"truth has shape {truth.shape}, pred {pred.shape}")
    if truth.size == 0:
        raise ValueError("masks are empty arrays")


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else float("nan")


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_CROSS)


def _distances_to(
    source: np.ndarray, target: np.ndarray, spacing_mm: tuple[float, float] | None
) -> np.ndarray:
    """Distance from each True pixel of ``source`` to the nearest True pixel of ``target``."""
    return ndimage.distance_transform_edt(~target, sampling=spacing_mm)[source]
