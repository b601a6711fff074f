"""Which 95 % interval a figure reports: the bootstrap's where it means something, an exact or
none where it does not. One rule for every evaluate figure, so intervals side by side are alike.

A percentile bootstrap interval degenerates where every resample gives the same value: 0 of 8
malignant images found gives 0.000 (0.000-0.000), a perfect AUROC on six images 1.000
(1.000-1.000). Both claim a certainty six images cannot give. So:

- a proportion (sensitivity, specificity, accuracy, a share of images or patients; any mean of
  0/1 values) takes the exact Clopper-Pearson interval of successes / total where fewer than
  `MIN_COUNT` successes or failures exist (0 of n and n of n among them) or no bootstrap could
  be drawn (one patient), else the bootstrap's, which resamples patients where images share one;
- an AUROC has no interval ("not estimable", NaN bounds) where a class has fewer than
  `MIN_COUNT` cases or every resample gives the same AUROC (perfect separation): DeLong's and
  Hanley-McNeil's variances are 0 there too, so no interval of the usual kinds is honest;
- any other figure (mean Dice, F1, a calibration slope) has none where the bootstrap's interval
  has zero width.

`ci_method` in metrics.json names which: `BOOTSTRAP`, `EXACT` or `NOT_ESTIMABLE`; `n` stays
beside every figure.
"""

from __future__ import annotations

import math
from typing import NotRequired, TypedDict

from statsmodels.stats.proportion import proportion_confint

BOOTSTRAP = "bootstrap"
EXACT = "exact"
NOT_ESTIMABLE = "n/a"
# The normal approximation behind a percentile interval of a proportion wants about 5 successes
# and 5 failures (the textbook np >= 5 rule); an AUROC wants as many cases in each class.
MIN_COUNT = 5

Interval = tuple[float, float, str]
# The rule in one line, for metrics.json and the console
RULE = (f"95 % CIs: percentile bootstrap (over patients where ids exist); exact "
        f"(Clopper-Pearson) for a proportion with fewer than {MIN_COUNT} successes or failures; "
        f"'CI n/a' for an AUROC with fewer than {MIN_COUNT} cases in a class, or where every "
        "resample gives the same value")


class MetricSummary(TypedDict):
    """A figure as metrics.json holds it."""

    mean: float
    ci_low: float
    ci_high: float
    n: int  # images (rows, patients) that entered the figure
    n_excluded: int  # rows whose value was NaN (undefined for that image)
    ci_method: NotRequired[str]  # BOOTSTRAP, EXACT or NOT_ESTIMABLE


def clopper_pearson(successes: int, total: int, ci: float = 0.95) -> tuple[float, float]:
    """Exact binomial CI of successes / total; (nan, nan) when total is 0."""
    if total == 0:
        return math.nan, math.nan
    low, high = proportion_confint(successes, total, alpha=1 - ci, method="beta")
    return float(low), float(high)


def proportion_interval(successes: int, total: int, low: float, high: float,
                        ci: float = 0.95) -> Interval:
    """(low, high, method) of successes / total, given the bootstrap's (low, high)."""
    if total == 0:
        return math.nan, math.nan, NOT_ESTIMABLE
    if min(successes, total - successes) < MIN_COUNT or not low < high:
        return (*clopper_pearson(successes, total, ci), EXACT)
    return low, high, BOOTSTRAP


def auroc_interval(low: float, high: float, n_positive: int, n_negative: int) -> Interval:
    """(low, high, method) of an AUROC, given the bootstrap's (or DeLong's) (low, high)."""
    if min(n_positive, n_negative) < MIN_COUNT or not low < high:
        return math.nan, math.nan, NOT_ESTIMABLE
    return low, high, BOOTSTRAP


def spread_interval(low: float, high: float) -> Interval:
    """(low, high, method) of any other figure: none where the bootstrap's has zero width."""
    if not low < high:
        return math.nan, math.nan, NOT_ESTIMABLE
    return low, high, BOOTSTRAP


def metric_summary(mean: float, interval: Interval, n: int, n_excluded: int = 0
                   ) -> MetricSummary:
    """A figure as metrics.json holds it."""
    low, high, method = interval
    return MetricSummary(mean=mean, ci_low=low, ci_high=high, n=n, n_excluded=n_excluded,
                         ci_method=method)
