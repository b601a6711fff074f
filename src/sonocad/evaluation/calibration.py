"""How far a predicted probability can be taken at its word: calibration slope, intercept and
Brier score, with bootstrap CIs (Van Calster et al., "Calibration: the Achilles heel of
predictive analytics", BMC Medicine 2019).

- ``calibration_slope``: the slope of a logistic regression of the outcome on the logit of the
  probability; 1 is ideal, below 1 the probabilities are too extreme, above 1 too timid;
- ``calibration_intercept`` (calibration-in-the-large): the intercept of the same regression
  with the slope fixed at 1 (the logit as an offset); 0 is ideal, below 0 the probabilities run
  too high;
- ``brier``: the mean squared difference of probability and outcome;
- `reliability_curve`: observed against predicted per bin, the picture behind the three.

The fits are Newton-Raphson on one or two parameters in numpy: the bootstrap refits them
thousands of times, and a statsmodels fit per resample would take minutes (the test compares
the two).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from sonocad.evaluation.bootstrap import bootstrap_indices, percentile_interval
from sonocad.evaluation.intervals import (
    MetricSummary,
    clopper_pearson,
    metric_summary,
    spread_interval,
)

NEWTON_STEPS = 50
EPSILON = 1e-6
FIGURES = ("calibration_slope", "calibration_intercept", "brier")
RELIABILITY_BINS = 10


def calibration_figures(truth: ArrayLike, probability: ArrayLike, *,
                        groups: ArrayLike | None = None, n_boot: int = 2000,
                        seed: int = 0) -> dict[str, MetricSummary]:
    """Slope, intercept and Brier score of `probability` for the binary `truth`, each with a
    95 % percentile bootstrap CI (whole `groups` resampled where given). Undefined figures (one
    outcome only, or a perfectly separated resample) are NaN and left out of the interval;
    an interval of zero width is none (`sonocad.evaluation.intervals`)."""
    y = np.asarray(truth, dtype=float)
    p = np.clip(np.asarray(probability, dtype=float), EPSILON, 1 - EPSILON)
    x = np.log(p / (1 - p))
    point = _figures(y, x, p)
    resampled = np.array([_figures(y[i], x[i], p[i]) for i in
                          bootstrap_indices(len(y), n_boot=n_boot, seed=seed, groups=groups)])
    out: dict[str, MetricSummary] = {}
    for k, name in enumerate(FIGURES):
        low, high = percentile_interval(resampled[:, k] if resampled.size else [])
        out[name] = metric_summary(point[k], spread_interval(low, high), len(y))
    return out


def reliability_curve(truth: ArrayLike, probability: ArrayLike,
                      n_bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Observed against predicted in `n_bins` equal-width bins of [0, 1] (`calibration_bin`):
    per bin its ``count``, mean ``predicted`` probability, ``observed`` share of positives and
    that share's exact (Clopper-Pearson) 95 % CI, None in an empty bin; ``edges`` bound them.
    Equal widths rather than quantiles: the bins mean the same on every model and data set,
    and the counts say where the probabilities lie."""
    y = np.asarray(truth, dtype=float)
    p = np.asarray(probability, dtype=float)
    bins = calibration_bin(p, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    positives = np.bincount(bins, weights=y, minlength=n_bins)
    sums = np.bincount(bins, weights=p, minlength=n_bins)
    curve: dict[str, Any] = {"n_bins": n_bins,
                             "edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
                             "counts": counts.tolist(), "positives": positives.astype(int).tolist(),
                             "predicted": [], "observed": [], "ci_low": [], "ci_high": []}
    for count, hits, total in zip(counts.tolist(), positives.tolist(), sums.tolist()):
        low, high = clopper_pearson(int(hits), count) if count else (None, None)
        curve["predicted"].append(total / count if count else None)
        curve["observed"].append(hits / count if count else None)
        curve["ci_low"].append(low)
        curve["ci_high"].append(high)
    return curve


def calibration_bin(probability: ArrayLike, n_bins: int) -> np.ndarray:
    """Bin index of each probability in `n_bins` equal widths of [0, 1], right-closed (the first
    also holds 0): exactly as sklearn's calibration_curve(strategy="uniform") bins them."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], probability)


def _figures(y: np.ndarray, x: np.ndarray, p: np.ndarray) -> tuple[float, float, float]:
    if not 0 < y.sum() < len(y):
        return math.nan, math.nan, float(np.mean((p - y) ** 2)) if len(y) else math.nan
    slope = _logistic(y, np.column_stack([np.ones_like(x), x]), np.zeros_like(x))
    intercept = _logistic(y, np.ones((len(x), 1)), x)
    return (float(slope[1]) if slope is not None else math.nan,
            float(intercept[0]) if intercept is not None else math.nan,
            float(np.mean((p - y) ** 2)))


def _logistic(y: np.ndarray, design: np.ndarray, offset: np.ndarray) -> np.ndarray | None:
    """Maximum-likelihood coefficients of logit P(y) = design @ beta + offset; None where the
    fit does not converge (separation)."""
    beta = np.zeros(design.shape[1])
    for _ in range(NEWTON_STEPS):
        eta = np.clip(design @ beta + offset, -30, 30)
        mu = 1 / (1 + np.exp(-eta))
        weight = mu * (1 - mu)
        hessian = design.T @ (design * weight[:, None])
        try:
            step = np.linalg.solve(hessian, design.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            return beta if np.all(np.abs(beta) < 1e3) else None
    return None
