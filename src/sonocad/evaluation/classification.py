"""Classification metrics from true class indices and predicted probabilities, with 95 % CIs.

Inputs: ``y_true`` (N,) class indices into ``class_names``; ``probs`` (N, C) class
probabilities (softmax outputs). The predicted class is the argmax (the first on ties, as
``Prediction.predicted_class``).

Every metric is computed over the whole set of images at once (pooled); none is a mean of
per-image values except accuracy, which is both. A metric whose denominator is empty is NaN,
as in `sonocad.evaluation.segmentation`: the precision of a class never predicted, the AUROC
of a class absent from the truth. Names (with ``<c>`` each class name):

- ``accuracy``; ``precision_<c>``, ``recall_<c>`` (sensitivity), ``f1_<c>``;
- ``macro_f1``: unweighted mean of the per-class F1 over classes seen in the truth or the
  predictions (scikit-learn's ``average="macro", zero_division=nan``; the trainer's val
  ``macro_f1``);
- ``auroc_<c>``: one class against the rest, scored by that class's probability;
  ``macro_auroc``: their unweighted mean (scikit-learn's ``multi_class="ovr"``), NaN unless
  every class occurs in the truth;
- ``benign_vs_malignant_auroc`` (when both classes exist): on images whose true label is benign
  or malignant, scored by P(malignant) / (P(benign) + P(malignant)), the model's malignancy
  belief once "normal" is ruled out — the question a biopsy decision asks;
- ``ece``: top-label expected calibration error (Guo et al. 2017), see
  `expected_calibration_error`.

CIs: percentile bootstrap, resampling images, or whole patients with ``groups``. Every metric
is recomputed on the same resamples; a resample in which a metric is undefined (a class drawn
zero times) is left out of that metric's interval, the usual practice for bootstrap AUROCs.
Where the bootstrap says nothing (few or no errors, a class of a few images) the rule of
`sonocad.evaluation.intervals` applies: proportions (accuracy, precision, recall, lesions called
normal) take the exact Clopper-Pearson interval, an AUROC is "not estimable". Each metric's
``n`` is its denominator: the images of that class for a recall, those predicted it for a
precision, the benign and malignant images for the benign-vs-malignant figures.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix, roc_auc_score, roc_curve

from sonocad.evaluation.bootstrap import bootstrap_indices
from sonocad.evaluation.calibration import calibration_bin
from sonocad.evaluation.intervals import (
    Interval,
    MetricSummary,
    auroc_interval,
    metric_summary,
    proportion_interval,
    spread_interval,
)

CALIBRATION_BINS = 10
MAX_ROC_POINTS = 200
BENIGN_VS_MALIGNANT = "benign_vs_malignant"


def classification_metrics(
    y_true: ArrayLike,
    probs: ArrayLike,
    class_names: Sequence[str],
    *,
    groups: ArrayLike | None = None,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every classification metric with its CI, plus the confusion matrix, ROC and calibration.

    Returns a JSON-ready dict: ``metrics`` (name -> MetricSummary; ``mean`` is the estimate on
    all images, ``n`` the images it was computed on), ``support`` (true images per class),
    ``confusion_matrix`` (rows truth, columns prediction), ``roc`` (per class and
    benign-vs-malignant: fpr, tpr, thresholds, at most ~200 points) and ``calibration``.
    """
    y, p = _check_inputs(y_true, probs, class_names)
    names = list(class_names)
    point = _scalar_metrics(y, p, names)
    low, high = _bootstrap_intervals(y, p, names, len(point), groups, ci=ci, n_boot=n_boot,
                                     seed=seed)
    predicted = p.argmax(1)
    return {
        "n_images": len(y),
        "class_names": names,
        "support": {name: int((y == k).sum()) for k, name in enumerate(names)},
        "metrics": _summaries(y, predicted, names, point, low, high, ci),
        "confusion_matrix": {
            "labels": names,
            "matrix": confusion_matrix(y, predicted, labels=range(len(names))).tolist(),
        },
        "roc": roc_curves(y, p, names),
        "calibration": reliability(p.max(1), predicted == y),
    }


def expected_calibration_error(confidence: ArrayLike, correct: ArrayLike,
                               n_bins: int = CALIBRATION_BINS) -> float:
    """Top-label ECE: sum over bins B of |B| / N * |accuracy(B) - mean confidence(B)|.

    ``confidence`` is each image's top-class probability, ``correct`` whether that class was
    right. Bins are ``n_bins`` equal widths of [0, 1], right-closed: ((k-1)/M, k/M], the first
    also holding 0 — scikit-learn's ``calibration_curve(strategy="uniform")`` bins, so the ECE
    and the reliability curve describe the same bins. 0 is perfect calibration.
    """
    conf = np.asarray(confidence, dtype=float)
    hits = np.asarray(correct, dtype=float)
    bins = calibration_bin(conf, n_bins)
    # |B| * |acc(B) - conf(B)| = |sum of hits in B - sum of confidences in B|.
    gaps = (np.bincount(bins, weights=hits, minlength=n_bins)
            - np.bincount(bins, weights=conf, minlength=n_bins))
    return float(np.abs(gaps).sum() / conf.size)


def reliability(confidence: ArrayLike, correct: ArrayLike,
                n_bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """The reliability curve of top-class confidence against correctness, per non-empty bin.

    ``edges`` and ``counts`` cover all bins (for a histogram); ``confidence`` (mean in the bin)
    and ``accuracy`` (fraction correct) only the non-empty ones.
    """
    conf = np.asarray(confidence, dtype=float)
    hits = np.asarray(correct, dtype=int)
    accuracy, mean_confidence = calibration_curve(hits, conf, n_bins=n_bins, strategy="uniform")
    return {
        "n_bins": n_bins,
        "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "counts": np.bincount(calibration_bin(conf, n_bins), minlength=n_bins).tolist(),
        "confidence": mean_confidence.tolist(),
        "accuracy": accuracy.tolist(),
    }


def roc_curves(y_true: np.ndarray, probs: np.ndarray,
               class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """One-vs-rest ROC points per class, and benign-vs-malignant where both classes exist.

    A class absent from the truth (or the only one present) has no curve. Each curve is thinned
    to at most MAX_ROC_POINTS points, ends kept; the first threshold, "above every score", is
    None (JSON has no infinity).
    """
    curves = {name: _roc_points(y_true == k, probs[:, k]) for k, name in enumerate(class_names)}
    if {"benign", "malignant"} <= set(class_names):
        kept = _benign_or_malignant(y_true, class_names)
        truth, score = benign_vs_malignant_scores(y_true[kept], probs[kept], class_names)
        curves[BENIGN_VS_MALIGNANT] = _roc_points(truth, score)
    return {name: curve for name, curve in curves.items() if curve is not None}


def _scalar_metrics(y: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, float]:
    """Every scalar metric, in a fixed order (the bootstrap stacks them by position).

    Plain numpy on the confusion matrix and midranks, not scikit-learn's metric functions:
    the bootstrap calls this thousands of times, and their input checks cost ~100x the
    arithmetic. tests/test_classification_metrics.py holds them equal to scikit-learn's."""
    k = len(names)
    predicted = probs.argmax(1)
    tp, n_predicted, n_true = _confusion_counts(y, predicted, k)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty denominator gives NaN
        precision, recall = tp / n_predicted, tp / n_true
        f1 = 2 * tp / (n_predicted + n_true)
    auroc = [rank_auroc(y == c, probs[:, c]) for c in range(k)]
    scalars = {
        "accuracy": float(tp.sum() / len(y)),
        # NaN F1 (class neither true nor predicted) is left out, as sklearn's macro average does.
        "macro_f1": float(np.nanmean(f1)),
        "macro_auroc": float(np.mean(auroc)),
    }
    if {"benign", "malignant"} <= set(names):
        kept = _benign_or_malignant(y, names)
        scalars[BENIGN_VS_MALIGNANT + "_auroc"] = rank_auroc(
            *benign_vs_malignant_scores(y[kept], probs[kept], names))
        if "normal" in names:  # the miss a radiologist notices first
            called_normal = predicted[kept] == names.index("normal")
            scalars["lesion_called_normal"] = (float(called_normal.mean()) if kept.any()
                                               else float("nan"))
    scalars["ece"] = expected_calibration_error(probs.max(1), predicted == y)
    for c, name in enumerate(names):
        scalars |= {f"precision_{name}": float(precision[c]), f"recall_{name}": float(recall[c]),
                    f"f1_{name}": float(f1[c]), f"auroc_{name}": auroc[c]}
    return scalars


def _confusion_counts(y: np.ndarray, predicted: np.ndarray,
                      k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, images predicted, images true) per class."""
    matrix = np.bincount(y * k + predicted, minlength=k * k).reshape(k, k)
    return np.diag(matrix), matrix.sum(0), matrix.sum(1)


def _summaries(y: np.ndarray, predicted: np.ndarray, names: list[str], point: dict[str, float],
               low: np.ndarray, high: np.ndarray, ci: float) -> dict[str, MetricSummary]:
    """Each metric with its n and its interval by `sonocad.evaluation.intervals`' rule, from
    the bootstrap's (low, high): proportions by their counts, AUROCs by their classes' sizes."""
    k, n = len(names), len(y)
    tp, n_predicted, n_true = (a.tolist() for a in _confusion_counts(y, predicted, k))
    proportions = {"accuracy": (sum(tp), n)}
    aurocs = {"macro_auroc": (min(n_true), n - max(n_true))}
    for c, name in enumerate(names):
        proportions |= {f"recall_{name}": (tp[c], n_true[c]),
                        f"precision_{name}": (tp[c], n_predicted[c])}
        aurocs[f"auroc_{name}"] = (n_true[c], n - n_true[c])
    if BENIGN_VS_MALIGNANT + "_auroc" in point:
        aurocs[BENIGN_VS_MALIGNANT + "_auroc"] = (n_true[names.index("malignant")],
                                                  n_true[names.index("benign")])
    if "lesion_called_normal" in point:
        lesion = _benign_or_malignant(y, names)
        proportions["lesion_called_normal"] = (
            int((predicted[lesion] == names.index("normal")).sum()), int(lesion.sum()))
    out = {}
    for (name, value), lo, hi in zip(point.items(), low.tolist(), high.tolist()):
        interval: Interval
        used = n
        if name in proportions:
            hits, used = proportions[name]
            interval = proportion_interval(hits, used, lo, hi, ci)
        elif name in aurocs:
            positive, negative = aurocs[name]
            if name == BENIGN_VS_MALIGNANT + "_auroc":
                used = positive + negative
            interval = auroc_interval(lo, hi, positive, negative)
        else:
            interval = spread_interval(lo, hi)
        out[name] = metric_summary(value, interval, used, n - used)
    return out


def _bootstrap_intervals(y: np.ndarray, probs: np.ndarray, names: list[str], n_metrics: int,
                         groups: ArrayLike | None, *, ci: float, n_boot: int,
                         seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile (low, high) of each scalar metric over the same resamples; NaN-tolerant."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}")
    replicates = np.array([
        list(_scalar_metrics(y[i], probs[i], names).values())
        for i in bootstrap_indices(len(y), n_boot=n_boot, seed=seed, groups=groups)
    ]).reshape(-1, n_metrics)
    if not replicates.size:  # fewer than two images or patients: nothing to resample
        return np.full(n_metrics, np.nan), np.full(n_metrics, np.nan)
    tail = (1 - ci) / 2
    with warnings.catch_warnings():  # a metric undefined in every resample stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanquantile(replicates, [tail, 1 - tail], axis=0)
    return low, high


def rank_auroc(truth: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (positives x negatives), ties counted 1/2: scikit-learn's AUROC."""
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if not n_pos or not n_neg:
        return float("nan")
    rank_sum = rankdata(score)[truth].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _roc_points(truth: np.ndarray, score: np.ndarray) -> dict[str, Any] | None:
    if truth.all() or not truth.any():
        return None
    fpr, tpr, thresholds = roc_curve(truth, score)
    keep = np.unique(np.linspace(0, fpr.size - 1, min(fpr.size, MAX_ROC_POINTS)).round())
    keep = keep.astype(int)
    return {
        "auroc": float(roc_auc_score(truth, score)),
        "fpr": fpr[keep].tolist(),
        "tpr": tpr[keep].tolist(),
        "thresholds": [float(t) if np.isfinite(t) else None for t in thresholds[keep]],
    }


def _benign_or_malignant(y: np.ndarray, names: Sequence[str]) -> np.ndarray:
    return np.isin(y, [names.index("benign"), names.index("malignant")])


def benign_vs_malignant_scores(y: np.ndarray, probs: np.ndarray,
                         names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(is malignant, P(malignant) / (P(benign) + P(malignant))) for benign/malignant images."""
    return y == names.index("malignant"), malignancy_ratio(probs[:, names.index("benign")],
                                                           probs[:, names.index("malignant")])


def malignancy_ratio(benign: np.ndarray, malignant: np.ndarray) -> np.ndarray:
    """P(malignant) / (P(benign) + P(malignant)) per image: the belief once "normal" is out."""
    total = benign + malignant
    # Both underflowed to 0 (the model is sure it is normal): no preference either way.
    return np.divide(malignant, total, out=np.full_like(total, 0.5), where=total > 0)


def _check_inputs(y_true: ArrayLike, probs: ArrayLike,
                  class_names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=float)
    n_classes = len(class_names)
    if n_classes < 2 or len(set(class_names)) != n_classes:
        raise ValueError(f"class_names must be at least two distinct names, got {class_names}")
    if p.ndim != 2 or p.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (N, {n_classes}), got {p.shape}")
    if y.shape != (p.shape[0],) or y.size == 0:
        raise ValueError(f"y_true must have shape ({p.shape[0]},) and N > 0, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"y_true must be class indices in 0..{n_classes - 1}")
    if not (np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1):
        raise ValueError("probs must be probabilities in [0, 1]")
    return y, p
