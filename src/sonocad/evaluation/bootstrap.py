"""Percentile bootstrap confidence intervals, over images or over clusters such as patients.

One resampling path serves both cases: without ``groups`` every value is its own cluster, which
is the ordinary bootstrap. scipy.stats.bootstrap has no cluster resampling, and images from one
patient are correlated, so a CI that treats them as independent is too narrow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[[np.ndarray], float] = np.mean,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap ``ci`` interval of ``statistic`` over a 1-D array of values.

    NaN values (and their group labels) are left out. With ``groups`` (one label per value,
    e.g. patient ids) whole groups are resampled with replacement. Returns (nan, nan) when fewer
    than two values, or fewer than two groups, remain: there is nothing to resample. The same
    seed gives the same interval.
    """
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie strictly between 0 and 1, got {ci}")
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    if groups is None:
        labels = np.arange(x.size)
    else:
        labels = np.asarray(groups)
        if labels.shape != x.shape:
            raise ValueError(f"groups has shape {labels.shape}, values {x.shape}")

    kept = ~np.isnan(x)
    x, labels = x[kept], labels[kept]
    resamples = bootstrap_indices(x.size, n_boot=n_boot, seed=seed, groups=labels)
    return percentile_interval([statistic(x[resample]) for resample in resamples], ci)


def percentile_interval(replicates: ArrayLike, ci: float = 0.95) -> tuple[float, float]:
    """The percentile `ci` interval of a statistic's bootstrap replicates; those that are not
    finite (undefined on that resample) are left out, and (nan, nan) where none is left."""
    stats = np.asarray(replicates, dtype=float)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return float("nan"), float("nan")
    tail = (1 - ci) / 2
    low, high = np.quantile(stats, [tail, 1 - tail])
    return float(low), float(high)


def bootstrap_indices(n: int, *, n_boot: int = 2000, seed: int = 0,
                      groups: ArrayLike | None = None) -> Iterator[np.ndarray]:
    """`n_boot` resamples of positions 0..n-1 (index arrays), for statistics of several arrays.

    Index every array (labels and scores for an AUROC, say) with each resample. With ``groups``
    (one label per position) whole groups are drawn with replacement. Nothing is yielded when
    fewer than two units (positions, or groups) exist. The same seed gives the same resamples;
    `bootstrap_ci` draws exactly these.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    labels = np.arange(n) if groups is None else np.asarray(groups)
    if labels.shape != (n,):
        raise ValueError(f"groups has shape {labels.shape}, expected ({n},)")
    _, codes = np.unique(labels, return_inverse=True)
    return _resamples(codes, n_boot, seed)


def _resamples(codes: np.ndarray, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    sizes = np.bincount(codes)
    if sizes.size < 2:
        return
    # Positions sorted by cluster, so cluster j is order[starts[j] : starts[j] + sizes[j]].
    order = np.argsort(codes, kind="stable")
    starts = np.cumsum(sizes) - sizes
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        chosen = rng.integers(0, sizes.size, size=sizes.size)
        yield order[_member_indices(starts[chosen], sizes[chosen])]


def _member_indices(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Indices of every member of the chosen clusters, with no Python loop over clusters."""
    ends = np.cumsum(sizes)
    return np.repeat(starts - (ends - sizes), sizes) + np.arange(ends[-1])


def row_unit(row: Mapping[str, Any]) -> str:
    """The cluster a predictions table's row is resampled in: its patient where the row names
    one (a patient's images are alike), else the image alone. Patient ids are per data source:
    patient 1 of one data set is not patient 1 of another."""
    if row.get("patient_id"):
        return f"patient {row.get('source') or ''}/{row['patient_id']}"
    return f"image {row['image_id']}"
