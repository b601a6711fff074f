"""Lesion by lesion: did the model find each true lesion, and how many lesions did it make up?

A true lesion is a connected region (8-neighbours) of the truth mask; a predicted lesion one of
`sonocad.measure.find_lesions` (specks dropped, as the table lists them). At each IoU threshold
of `IOU_THRESHOLDS` the pairs are matched greedily, highest IoU first, each lesion used once
(with one lesion per image, as in BUSI and BUS-BRA, this is the optimal matching). Per image:
``truth_lesions``, ``found_lesions_<t>`` and ``false_lesions_<t>``; over a set of images:
``lesion_sensitivity_<t>`` (found / true lesions) and ``false_lesions_per_image_<t>``, with
95 % percentile bootstrap CIs over patients where ids exist (`sonocad.evaluation.intervals`'
rule: exact for few lesions found or missed, none where every resample agrees). The per-image
overlap metrics (IoU, Dice, ...) are not changed by any of this: they score the whole mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from sonocad.evaluation.bootstrap import bootstrap_indices, percentile_interval
from sonocad.evaluation.intervals import (
    MetricSummary,
    metric_summary,
    proportion_interval,
    spread_interval,
)
from sonocad.measure import Lesion

IOU_THRESHOLDS = (0.1, 0.5)


def lesion_matches(truth: np.ndarray, lesions: Sequence[Lesion]) -> dict[str, int]:
    """The image's lesion-level counts (see the module's docstring)."""
    labels, n_true = ndimage.label(truth, structure=np.ones((3, 3), bool))
    true_areas = np.bincount(labels.ravel(), minlength=n_true + 1)[1:]
    ious = np.zeros((n_true, len(lesions)))
    for j, lesion in enumerate(lesions):
        x0, y0, x1, y1 = lesion.box
        overlap = np.bincount(labels[y0:y1, x0:x1][lesion.mask], minlength=n_true + 1)[1:]
        ious[:, j] = overlap / np.maximum(true_areas + lesion.area_px - overlap, 1)
    counts = {"truth_lesions": n_true}
    for threshold in IOU_THRESHOLDS:
        found = _greedy_matches(ious, threshold)
        counts[f"found_lesions_{threshold:g}"] = found
        counts[f"false_lesions_{threshold:g}"] = len(lesions) - found
    return counts


def _greedy_matches(ious: np.ndarray, threshold: float) -> int:
    pairs = sorted(((iou, i, j) for (i, j), iou in np.ndenumerate(ious) if iou >= threshold),
                   reverse=True)
    used_true, used_predicted = set(), set()
    for _, i, j in pairs:
        if i not in used_true and j not in used_predicted:
            used_true.add(i)
            used_predicted.add(j)
    return len(used_true)


def lesion_detection_summary(rows: Sequence[dict[str, Any]], *, groups: Sequence[Any] | None,
                             n_boot: int = 2000, seed: int = 0) -> dict[str, MetricSummary]:
    """Lesion sensitivity and false lesions per image at each threshold, over `rows` (each
    with `lesion_matches`' columns), CIs resampling `groups` (one label per row) or rows."""
    true = np.array([row["truth_lesions"] for row in rows], float)
    resamples = list(bootstrap_indices(len(rows), n_boot=n_boot, seed=seed, groups=groups))
    out = {}
    for threshold in IOU_THRESHOLDS:
        found = np.array([row[f"found_lesions_{threshold:g}"] for row in rows], float)
        false = np.array([row[f"false_lesions_{threshold:g}"] for row in rows], float)
        sensitivity = _bootstrapped(lambda i, f=found: _ratio(f[i].sum(), true[i].sum()),
                                    len(rows), resamples)
        out[f"lesion_sensitivity_{threshold:g}"] = metric_summary(
            sensitivity[0], proportion_interval(int(found.sum()), int(true.sum()),
                                                *sensitivity[1:]), int(true.sum()))
        per_image = _bootstrapped(lambda i, f=false: float(f[i].mean()) if len(i) else math.nan,
                                  len(rows), resamples)
        out[f"false_lesions_per_image_{threshold:g}"] = metric_summary(
            per_image[0], spread_interval(*per_image[1:]), len(rows))
    return out


def _bootstrapped(statistic: Any, n_rows: int, resamples: list[np.ndarray]
                  ) -> tuple[float, float, float]:
    """(the statistic on every row, the bootstrap's low, high)."""
    low, high = percentile_interval([statistic(i) for i in resamples])
    return statistic(np.arange(n_rows)), low, high


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan
