"""Detection metrics: COCO-style AP50 and mAP@[.5:.95], and the image-level malignancy score.

Matching follows COCO (pycocotools' COCOeval, without crowd regions or area ranges): within an
image, predictions of a class are taken in descending score order and each claims the unmatched
truth instance of the same class with the highest IoU, if that IoU is at least the threshold; of
truths with equal IoU it claims the last, as COCOeval does; the rest are false positives, and
unclaimed truths are false negatives.

AP is COCO's: the pooled predictions of a class in descending score order (ties in image
order), precision made monotone from the right, and sampled at the 101 recall points 0, 0.01,
..., 1 (0 past the highest recall reached), recall counting every truth instance, matched or
not; tests check it against COCOeval itself. Classes are averaged with equal weight, over those
with at least one truth instance (as COCO does); mAP also averages the ten IoU thresholds
0.50, 0.55, ..., 0.95.

IoU is computed between boxes (``iou="box"``, torchvision.ops.box_iou) or between instance
masks (``iou="mask"``, COCO's "segm"); metrics name which. `score_image` reduces each image to
its IoU matrices and scores at once, so scoring a data set never holds all its masks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2).tolist())
IOU_TYPES = ("box", "mask")
MASK_THRESHOLD = 0.5  # Mask R-CNN's mask probability cut-off, as torchvision pastes masks


@dataclass(frozen=True)
class ImageInstances:
    """The instances of one image: truth (no scores) or predictions.

    boxes float (N, 4) x0, y0, x1, y1; labels int (N,) class indices (0 is background);
    masks bool (N, H, W), needed for mask IoU; scores float (N,) for predictions.
    """

    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None
    scores: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def from_torchvision(output: Mapping[str, torch.Tensor]) -> ImageInstances:
    """One image's torchvision detection output (eval mode; masks (N, 1, H, W) probabilities)
    or target (masks (N, H, W) in {0, 1}) as `ImageInstances`, at the model's input size."""
    masks = output.get("masks")
    if masks is not None:
        masks = (masks[:, 0] if masks.ndim == 4 else masks) > MASK_THRESHOLD
    scores = output.get("scores")
    return ImageInstances(
        boxes=output["boxes"].detach().float().cpu().numpy(),
        labels=output["labels"].cpu().numpy(),
        masks=None if masks is None else masks.cpu().numpy(),
        scores=None if scores is None else scores.detach().float().cpu().numpy())


@dataclass(frozen=True)
class ScoredImage:
    """What AP needs of one image, without its pixels: IoU (P, T) of each kind, prediction
    scores and labels, truth labels. Small enough to keep for a whole data set."""

    ious: dict[str, np.ndarray]
    scores: np.ndarray
    labels: np.ndarray
    truth_labels: np.ndarray


def score_image(predicted: ImageInstances, truth: ImageInstances,
                iou: Sequence[str] = IOU_TYPES) -> ScoredImage:
    """Pair one image's predictions with its truth for each IoU kind in `iou`."""
    if predicted.scores is None:
        raise ValueError("predictions need scores")
    return ScoredImage({kind: pairwise_iou(predicted, truth, kind) for kind in iou},
                       np.asarray(predicted.scores, dtype=float),
                       np.asarray(predicted.labels), np.asarray(truth.labels))


def pairwise_iou(predicted: ImageInstances, truth: ImageInstances, iou: str) -> np.ndarray:
    """IoU (P, T) between every prediction and every truth instance of one image."""
    if iou == "box":
        return box_iou(torch.as_tensor(predicted.boxes, dtype=torch.float64).reshape(-1, 4),
                       torch.as_tensor(truth.boxes, dtype=torch.float64).reshape(-1, 4)).numpy()
    if iou != "mask":
        raise ValueError(f"iou must be one of {IOU_TYPES}, got {iou!r}")
    if predicted.masks is None or truth.masks is None:
        raise ValueError("mask IoU needs the masks of predictions and truth")
    predicted_area = predicted.masks.sum(axis=(1, 2))
    # Per truth instance, count only its pixels: no (P, H*W) float matrix for big images.
    intersection = np.zeros((len(predicted), len(truth)))
    for t, truth_mask in enumerate(truth.masks):
        intersection[:, t] = predicted.masks[:, truth_mask].sum(1)
    union = predicted_area[:, None] + truth.masks.sum(axis=(1, 2))[None] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def match(ious: np.ndarray, scores: np.ndarray, predicted_labels: np.ndarray,
          truth_labels: np.ndarray, threshold: float) -> np.ndarray:
    """COCO's greedy matching in one image: a true-positive flag (P,) per prediction."""
    true_positive = np.zeros(len(scores), dtype=bool)
    claimed = np.zeros(len(truth_labels), dtype=bool)
    for p in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = (truth_labels == predicted_labels[p]) & ~claimed & (ious[p] >= threshold)
        if candidates.any():
            values = np.where(candidates, ious[p], -1.0)
            best = len(values) - 1 - int(np.argmax(values[::-1]))  # the last of equal IoUs
            claimed[best] = true_positive[p] = True
    return true_positive


RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's recThrs


def average_precision(scores: np.ndarray, true_positive: np.ndarray, n_truth: int) -> float:
    """COCO's 101-point interpolated AP of pooled predictions of one class against `n_truth`
    truth instances (NaN if none)."""
    if n_truth == 0:
        return float("nan")
    if not np.any(true_positive):
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=float), kind="mergesort")
    hits = np.asarray(true_positive, dtype=bool)[order]
    found = np.cumsum(hits)
    recall = found / n_truth
    precision = found / np.arange(1, len(hits) + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or more
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    sampled = np.where(at < len(envelope), envelope[np.minimum(at, len(envelope) - 1)], 0.0)
    return float(np.mean(sampled))


def detection_ap(images: Sequence[ScoredImage], class_names: Mapping[int, str], *,
                 iou: str = "box",
                 thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, Any]:
    """AP50 and mAP@[.5:.95] (means over classes with truth instances) and each class's AP.

    `class_names` maps the class indices to score (e.g. {1: "benign", 2: "malignant"}).
    Returns {"iou", "ap50", "map", "per_class": {name: {"ap50", "map", "n_truth"}}}.
    """
    thresholds = list(thresholds)
    pooled = _Pooled.of(images, iou, thresholds)
    table = pooled.ap_table(class_names)
    at_50 = thresholds.index(0.5) if 0.5 in thresholds else 0
    ap50, mean_ap = _class_means(table, at_50)
    return {"iou": iou, "ap50": ap50, "map": mean_ap,
            "per_class": {name: {"ap50": float(table[i, at_50]), "map": float(np.mean(table[i])),
                                 "n_truth": int(np.sum(pooled.truth_labels == label))}
                          for i, (label, name) in enumerate(class_names.items())}}


def bootstrap_ap(images: Sequence[ScoredImage], class_names: Mapping[int, str], *,
                 iou: str = "box", n_boot: int = 1000, seed: int = 0,
                 thresholds: Sequence[float] = IOU_THRESHOLDS) -> dict[str, tuple[float, float]]:
    """95 % percentile bootstrap CIs of AP50 and mAP, resampling images with replacement
    (matching is within an image, so it is done once); resamples without a truth instance
    are left out. {"ap50": (low, high), "map": (low, high)}."""
    thresholds = list(thresholds)
    at_50 = thresholds.index(0.5) if 0.5 in thresholds else 0
    per_image = [_Pooled.of([image], iou, thresholds) for image in images]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        chosen = [per_image[i] for i in rng.integers(0, len(images), len(images))]
        draws.append(_class_means(_Pooled.join(chosen).ap_table(class_names), at_50))
    values = np.array([d for d in draws if not np.isnan(d[0])]).reshape(-1, 2)
    if not len(values):
        return {"ap50": (math.nan, math.nan), "map": (math.nan, math.nan)}
    low, high = np.percentile(values, [2.5, 97.5], axis=0)
    return {"ap50": (float(low[0]), float(high[0])), "map": (float(low[1]), float(high[1]))}


def precision_recall(images: Sequence[ScoredImage], label: int, *, iou: str = "box",
                     threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) of class `label`'s pooled predictions at IoU `threshold`, recall over
    every truth instance, from the highest score down (the curve AP is the area under)."""
    pooled = _Pooled.of(images, iou, [threshold])
    chosen = pooled.labels == label
    order = np.argsort(-pooled.scores[chosen], kind="stable")
    hits = pooled.true_positive[0][chosen][order]
    n_truth = max(int(np.sum(pooled.truth_labels == label)), 1)
    found = np.cumsum(hits)
    return found / n_truth, found / np.arange(1, len(hits) + 1)


@dataclass(frozen=True)
class _Pooled:
    """Predictions of some images, pooled, with their true-positive flags per IoU threshold."""

    scores: np.ndarray
    labels: np.ndarray
    truth_labels: np.ndarray
    true_positive: list[np.ndarray]  # one flag array per threshold

    @classmethod
    def of(cls, images: Sequence[ScoredImage], iou: str, thresholds: Sequence[float]
           ) -> _Pooled:
        return cls.join([cls(image.scores, image.labels, image.truth_labels,
                             [match(image.ious[iou], image.scores, image.labels,
                                    image.truth_labels, threshold) for threshold in thresholds])
                         for image in images], n_thresholds=len(thresholds))

    @classmethod
    def join(cls, parts: Sequence[_Pooled], n_thresholds: int | None = None) -> _Pooled:
        count = n_thresholds if n_thresholds is not None else len(parts[0].true_positive)
        return cls(np.concatenate([p.scores for p in parts] or [np.zeros(0)]),
                   np.concatenate([p.labels for p in parts] or [np.zeros(0)]),
                   np.concatenate([p.truth_labels for p in parts] or [np.zeros(0)]),
                   [np.concatenate([p.true_positive[j] for p in parts]
                                   or [np.zeros(0, dtype=bool)]) for j in range(count)])

    def ap_table(self, class_names: Mapping[int, str]) -> np.ndarray:
        """AP (classes x thresholds); NaN for a class without truth instances."""
        table = np.full((len(class_names), len(self.true_positive)), np.nan)
        for i, label in enumerate(class_names):
            chosen = self.labels == label
            n_truth = int(np.sum(self.truth_labels == label))
            for j, flags in enumerate(self.true_positive):
                table[i, j] = average_precision(self.scores[chosen], flags[chosen], n_truth)
        return table


def _class_means(table: np.ndarray, at_50: int) -> tuple[float, float]:
    """(AP50, mAP) averaged over the classes that have truth instances."""
    scored = ~np.isnan(table[:, 0])
    if not scored.any():
        return math.nan, math.nan
    return float(np.mean(table[scored, at_50])), float(np.mean(table[scored]))


def box_and_mask_ap(images: Sequence[ScoredImage],
                    class_names: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`detection_ap` on box IoU and on mask IoU, over a detector's classes but index 0 (the
    background)."""
    lesion_classes = {i: name for i, name in enumerate(class_names) if i}
    return (detection_ap(images, lesion_classes, iou="box"),
            detection_ap(images, lesion_classes, iou="mask"))
