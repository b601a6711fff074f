"""Percentile bootstrap CIs: sanity, determinism, agreement with scipy, cluster resampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sonocad.evaluation.bootstrap import bootstrap_ci, row_unit


def normal_sample(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=0.7, scale=0.1, size=n)


def width(interval: tuple[float, float]) -> float:
    return interval[1] - interval[0]


def test_interval_contains_the_mean() -> None:
    x = normal_sample(50)
    low, high = bootstrap_ci(x)
    assert low < x.mean() < high


def test_interval_narrows_with_more_values() -> None:
    # Width shrinks like 1/sqrt(n): 16x the values, about a quarter of the width.
    assert width(bootstrap_ci(normal_sample(400))) < 0.5 * width(bootstrap_ci(normal_sample(25)))


def test_wider_interval_for_higher_confidence() -> None:
    x = normal_sample(50)
    assert width(bootstrap_ci(x, ci=0.5)) < width(bootstrap_ci(x, ci=0.95))


def test_deterministic_for_a_seed() -> None:
    x = normal_sample(30)
    assert bootstrap_ci(x, seed=3) == bootstrap_ci(x, seed=3)
    assert bootstrap_ci(x, seed=3) != bootstrap_ci(x, seed=4)


def test_agrees_with_scipy_percentile_bootstrap() -> None:
    x = normal_sample(100)
    ours = bootstrap_ci(x, n_boot=5000)
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=5000, rng=7)
    # Monte Carlo error of each end is about 0.0004 here (bootstrap sd 0.01, 5000 resamples).
    assert ours[0] == pytest.approx(ref.confidence_interval.low, abs=0.002)
    assert ours[1] == pytest.approx(ref.confidence_interval.high, abs=0.002)


def test_other_statistics() -> None:
    x = normal_sample(60)
    low, high = bootstrap_ci(x, np.median)
    assert low < np.median(x) < high


def test_nan_values_are_left_out() -> None:
    x = normal_sample(30)
    with_nan = np.insert(x, [0, 10, 30], np.nan)
    assert bootstrap_ci(with_nan) == bootstrap_ci(x)


@pytest.mark.parametrize("values", [[], [0.5], [0.5, np.nan], [np.nan, np.nan]])
def test_too_few_values_give_nan(values: list[float]) -> None:
    low, high = bootstrap_ci(values)
    assert math.isnan(low) and math.isnan(high)


def test_one_group_gives_nan() -> None:
    low, high = bootstrap_ci([0.1, 0.2, 0.3], groups=["p1", "p1", "p1"])
    assert math.isnan(low) and math.isnan(high)


def test_singleton_groups_are_the_ordinary_bootstrap() -> None:
    x = normal_sample(40)
    assert bootstrap_ci(x, groups=np.arange(40)) == bootstrap_ci(x)


def test_grouped_interval_is_wider_for_clustered_data() -> None:
    # 10 patients x 20 images; images of a patient share a strong patient effect. Resampling
    # images pretends there are 200 independent values; resampling patients knows there are 10,
    # so its interval is roughly sqrt(20) ~ 4.5 times wider.
    rng = np.random.default_rng(2)
    patient_effect = rng.normal(0.7, 0.15, size=10)
    patients = np.repeat(np.arange(10), 20)
    x = patient_effect[patients] + rng.normal(0, 0.01, size=200)
    ungrouped = bootstrap_ci(x)
    grouped = bootstrap_ci(x, groups=patients)
    assert width(grouped) > 2.5 * width(ungrouped)
    assert grouped[0] < x.mean() < grouped[1]


def test_grouped_with_unequal_group_sizes_and_nan() -> None:
    # Group "c" is all NaN and drops out; "a" and "b" remain.
    x = [0.0, 0.0, 0.0, 1.0, np.nan, np.nan]
    groups = ["a", "a", "a", "b", "c", "c"]
    low, high = bootstrap_ci(x, groups=groups, n_boot=500)
    # Resampled means: both "a" -> 0, both "b" -> 1, one each -> 1/4.
    assert (low, high) == (0.0, 1.0)
    assert bootstrap_ci(x, groups=groups, ci=0.4, n_boot=500) == (0.25, 0.25)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ci": 1.0}, "ci"),
        ({"n_boot": 0}, "n_boot"),
        ({"groups": [1, 2]}, "groups"),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_ci([0.1, 0.2, 0.3], **kwargs)


def test_a_row_is_resampled_with_its_patient_of_its_source_else_alone() -> None:
    first = row_unit({"image_id": "a.png", "patient_id": "7", "source": "busbra"})
    assert first == row_unit({"image_id": "b.png", "patient_id": "7", "source": "busbra"})
    assert first != row_unit({"image_id": "a.png", "patient_id": "7", "source": "other"})
    assert row_unit({"image_id": "a.png", "patient_id": None}) != row_unit(
        {"image_id": "b.png", "patient_id": None})
