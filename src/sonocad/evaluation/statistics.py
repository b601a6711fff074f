"""The papers' statistics: exact CIs for rates, DeLong for AUROCs, McNemar, paired tests.

- Sensitivity, specificity and accuracy are proportions of images; their CIs are exact
  (Clopper-Pearson), as in QIMS 2023, so they stay inside [0, 1] and hold for small counts.
- AUROC: DeLong's nonparametric variance, computed with the midrank ("structural components")
  algorithm of Sun & Xu (2014, IEEE Signal Process. Lett. 21:1389), O(N log N). Its CI is the
  normal approximation AUROC +- z * SE, clipped to [0, 1], and none (NaN) where the rule of
  `sonocad.evaluation.intervals` finds it not estimable (a class under 5 cases, or zero
  variance: perfect separation); two AUROCs on the same cases are compared with the DeLong
  test, which accounts for their correlation.
- The exact McNemar test compares two paired binary outcomes (two models on the same images).
- ``paired_comparison`` is the JMIR 2026 participant-level test of a per-image metric.

Bootstrap CIs live in `sonocad.evaluation.bootstrap`. Positives are ``truth == 1`` (True); a
score ranks positives higher. A quantity whose denominator is empty is NaN, as elsewhere in
`sonocad.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import roc_curve
from statsmodels.stats.contingency_tables import mcnemar

from sonocad.evaluation.intervals import auroc_interval, clopper_pearson

NAN = float("nan")
PAIRED_T = "paired t"
WILCOXON = "Wilcoxon signed-rank"


@dataclass(frozen=True)
class Proportion:
    """successes / total with its exact CI."""

    estimate: float
    ci_low: float
    ci_high: float
    successes: int
    total: int


@dataclass(frozen=True)
class Auroc:
    """AUROC with DeLong's variance and the normal-approximation CI."""

    auroc: float
    variance: float
    se: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int


@dataclass(frozen=True)
class HypothesisTest:
    """A two-sided test: which one, its statistic and P."""

    test: str
    statistic: float
    p_value: float


@dataclass(frozen=True)
class PairedTest(HypothesisTest):
    """Participant-level paired test; ``n`` participants with a value from both models."""

    n: int
    shapiro_p: float
    mean_difference: float  # mean of (a - b) over participants


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold (positive when score >= threshold) and its rates."""

    threshold: float
    sensitivity: float
    specificity: float
    youden_j: float


# --- proportions --------------------------------------------------------------------------

def proportion(successes: int, total: int, ci: float = 0.95) -> Proportion:
    """successes / total with its Clopper-Pearson CI."""
    estimate = successes / total if total else NAN
    return Proportion(estimate, *clopper_pearson(successes, total, ci), int(successes), int(total))


def binary_rates(truth: ArrayLike, predicted: ArrayLike,
                 ci: float = 0.95) -> dict[str, Proportion]:
    """Sensitivity, specificity and accuracy of binary predictions, with exact CIs."""
    y, p = _binary(truth), _binary(predicted)
    if y.shape != p.shape:
        raise ValueError(f"truth has shape {y.shape}, predicted {p.shape}")
    return {
        "sensitivity": proportion(int((p & y).sum()), int(y.sum()), ci),
        "specificity": proportion(int((~p & ~y).sum()), int((~y).sum()), ci),
        "accuracy": proportion(int((p == y).sum()), y.size, ci),
    }


# --- AUROC: DeLong ------------------------------------------------------------------------

def delong_auroc(truth: ArrayLike, score: ArrayLike, ci: float = 0.95) -> Auroc:
    """AUROC with DeLong variance and CI; all NaN unless both classes occur, the CI NaN where
    it is not estimable (`sonocad.evaluation.intervals.auroc_interval`)."""
    y = _binary(truth)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return Auroc(NAN, NAN, NAN, NAN, NAN, n_pos, n_neg)
    aurocs, covariance = delong_covariance(y, np.asarray(score, dtype=float)[None])
    auroc, variance = float(aurocs[0]), float(covariance[0, 0])
    se = float(np.sqrt(variance))
    half = stats.norm.ppf(0.5 + ci / 2) * se
    low, high = np.clip([auroc - half, auroc + half], 0.0, 1.0)  # NaN stays NaN
    low, high, _ = auroc_interval(float(low), float(high), n_pos, n_neg)
    return Auroc(auroc, variance, se, low, high, n_pos, n_neg)


def delong_test(truth: ArrayLike, score_a: ArrayLike, score_b: ArrayLike) -> HypothesisTest:
    """DeLong's test of AUROC(a) = AUROC(b) for two scores of the same cases (two-sided).

    P is NaN when the difference has no variance (identical rankings) or a class is missing.
    """
    y = _binary(truth)
    if y.all() or not y.any():
        return HypothesisTest("DeLong", NAN, NAN)
    aurocs, cov = delong_covariance(y, np.vstack([score_a, score_b]).astype(float))
    variance = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    if not variance > 0:  # identical rankings, or NaN with a single case in a class
        return HypothesisTest("DeLong", NAN, NAN)
    z = float((aurocs[0] - aurocs[1]) / np.sqrt(variance))
    return HypothesisTest("DeLong", z, float(2 * stats.norm.sf(abs(z))))


def delong_covariance(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (k,) and their DeLong covariance (k, k) for k score rows over the same cases.

    Sun & Xu's algorithm: the structural components come from midranks within the positives,
    within the negatives and over all cases, so no m x n comparison matrix is built. Needs at
    least one positive and one negative (two of each for a finite variance).
    """
    y = np.asarray(truth, dtype=bool)
    positives, negatives = scores[:, y], scores[:, ~y]
    m, n = positives.shape[1], negatives.shape[1]
    rank_pos = stats.rankdata(positives, axis=1)
    rank_neg = stats.rankdata(negatives, axis=1)
    rank_all = stats.rankdata(np.hstack([positives, negatives]), axis=1)
    # V10: per positive, the share of negatives it outranks (ties count 1/2);
    # V01: per negative, the share of positives that outrank it.
    v10 = (rank_all[:, :m] - rank_pos) / n
    v01 = 1 - (rank_all[:, m:] - rank_neg) / m
    aurocs = v10.mean(axis=1)
    covariance = _sample_covariance(v10) / m + _sample_covariance(v01) / n
    return aurocs, covariance


def _sample_covariance(components: np.ndarray) -> np.ndarray:
    """Covariance (k, k) of k rows over cases; NaN, not a numpy warning, for a single case."""
    if components.shape[1] < 2:
        return np.full((len(components),) * 2, NAN)
    return np.atleast_2d(np.cov(components))


# --- operating point and paired tests -----------------------------------------------------

def youden_point(truth: ArrayLike, score: ArrayLike) -> OperatingPoint:
    """The ROC threshold maximising sensitivity + specificity - 1 (the highest one on ties)."""
    labels = _binary(truth)
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(score, dtype=float),
                                     drop_intermediate=False)
    # Ties compared in whole numbers (J x positives x negatives = TP x N - FP x P): in floats,
    # rounding decided between equal points, not "the highest threshold".
    positives, negatives = int(labels.sum()), int((~labels).sum())
    true_pos, false_pos = np.rint(tpr * positives), np.rint(fpr * negatives)
    best = int(np.argmax(true_pos * negatives - false_pos * positives))  # first: highest
    return OperatingPoint(float(thresholds[best]), float(tpr[best]), float(1 - fpr[best]),
                          float(tpr[best] - fpr[best]))


def mcnemar_exact(outcome_a: ArrayLike, outcome_b: ArrayLike) -> HypothesisTest:
    """Exact McNemar test of two paired binary outcomes (e.g. each model right or wrong).

    Only discordant pairs count: P is the two-sided binomial P of b (a yes, b no) among b + c.
    The statistic is min(b, c), statsmodels' convention.
    """
    a, b = _binary(outcome_a), _binary(outcome_b)
    if a.shape != b.shape:
        raise ValueError(f"outcome_a has shape {a.shape}, outcome_b {b.shape}")
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    result = mcnemar(table, exact=True)
    return HypothesisTest("McNemar exact", float(result.statistic), float(result.pvalue))


def paired_comparison(values_a: ArrayLike, values_b: ArrayLike, groups: ArrayLike | None = None,
                      *, normality_alpha: float = 0.05) -> PairedTest:
    """Participant-level paired test of a per-image metric from two models (JMIR 2026).

    Image pairs with a NaN on either side are dropped; the rest are averaged per participant
    (``groups``, e.g. patient ids; without it each image is a participant), because images of
    one patient are not independent. Shapiro-Wilk on the per-participant differences picks the
    test: paired t when P >= ``normality_alpha``, else Wilcoxon signed-rank. Constant
    differences have no spread for a t-test and go to Wilcoxon; all of them zero (a table
    against itself) is no difference, P = 1. Fewer than 3 participants: normality cannot be
    tested and the result is NaN with test "n/a".
    """
    a, b = _participant_means(values_a, values_b, groups)
    differences = a - b
    if differences.size < 3:
        return PairedTest("n/a", NAN, NAN, int(differences.size), NAN, _mean(differences))
    if not differences.any():
        # Wilcoxon drops zero differences, so none are left to rank: scipy warns and gives
        # P = 1 or NaN by sample size. Identical values are no difference: statistic 0, P = 1.
        return PairedTest(WILCOXON, 0.0, 1.0, int(differences.size), NAN, 0.0)
    constant = bool(np.ptp(differences) == 0)
    shapiro_p = NAN if constant else float(stats.shapiro(differences).pvalue)
    if shapiro_p >= normality_alpha:
        name, result = PAIRED_T, stats.ttest_rel(a, b)
    else:
        name, result = WILCOXON, stats.wilcoxon(a, b)
    return PairedTest(name, float(result.statistic), float(result.pvalue), int(differences.size),
                      shapiro_p, _mean(differences))


def _participant_means(values_a: ArrayLike, values_b: ArrayLike,
                       groups: ArrayLike | None) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    labels = np.arange(a.size) if groups is None else np.asarray(groups)
    if not a.shape == b.shape == labels.shape or a.ndim != 1:
        raise ValueError(f"values_a {a.shape}, values_b {b.shape} and groups {labels.shape} "
                         "must be 1-D of one length")
    kept = ~(np.isnan(a) | np.isnan(b))
    _, codes = np.unique(labels[kept], return_inverse=True)
    counts = np.bincount(codes)
    return (np.bincount(codes, weights=a[kept]) / counts,
            np.bincount(codes, weights=b[kept]) / counts)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else NAN


def _binary(values: ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or not np.isin(array, [0, 1]).all():
        raise ValueError("expected a 1-D array of 0/1 (or bool) values")
    return array.astype(bool)
