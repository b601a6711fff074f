"""The statistics reproduce independently computed values: scipy, statsmodels, hand formulas."""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from sonocad.evaluation.bootstrap import bootstrap_indices
from sonocad.evaluation.intervals import auroc_interval, proportion_interval, spread_interval
from sonocad.evaluation.statistics import (
    PAIRED_T,
    WILCOXON,
    binary_rates,
    clopper_pearson,
    delong_auroc,
    delong_covariance,
    delong_test,
    mcnemar_exact,
    paired_comparison,
    youden_point,
)
from sonocad.evaluation.summary import format_ci

# --- Clopper-Pearson ------------------------------------------------------------------------


@pytest.mark.parametrize(("successes", "total"), [(8, 10), (0, 10), (10, 10), (37, 52)])
def test_clopper_pearson_matches_beta_quantiles(successes: int, total: int) -> None:
    # The exact interval is the pair of beta quantiles (Clopper & Pearson 1934), 0 / 1 at the ends.
    low = stats.beta.ppf(0.025, successes, total - successes + 1) if successes else 0.0
    high = stats.beta.ppf(0.975, successes + 1, total - successes) if successes < total else 1.0
    assert clopper_pearson(successes, total) == pytest.approx((low, high), abs=1e-10)


def test_clopper_pearson_published_value() -> None:
    # 8 of 10: the textbook exact interval 0.444-0.975.
    assert clopper_pearson(8, 10) == pytest.approx((0.4439, 0.9748), abs=1e-4)
    assert all(math.isnan(v) for v in clopper_pearson(0, 0))


def test_binary_rates_counts_and_intervals() -> None:
    truth = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    predicted = [1, 1, 1, 0, 0, 0, 0, 0, 1, 1]
    rates = binary_rates(truth, predicted)
    assert (rates["sensitivity"].successes, rates["sensitivity"].total) == (3, 4)
    assert (rates["specificity"].successes, rates["specificity"].total) == (4, 6)
    assert (rates["accuracy"].successes, rates["accuracy"].total) == (7, 10)
    assert rates["accuracy"].estimate == pytest.approx(0.7)
    # 4 of 6, from the beta quantiles (not the statsmodels call the code itself makes)
    assert (rates["specificity"].ci_low, rates["specificity"].ci_high) == pytest.approx(
        (stats.beta.ppf(0.025, 4, 3), stats.beta.ppf(0.975, 5, 2)))


# --- McNemar --------------------------------------------------------------------------------


def test_exact_mcnemar_on_a_worked_table() -> None:
    # 5 both right, b = 10 only A right, c = 2 only B right, 5 both wrong.
    a = [1] * 5 + [1] * 10 + [0] * 2 + [0] * 5
    b = [1] * 5 + [0] * 10 + [1] * 2 + [0] * 5
    result = mcnemar_exact(a, b)
    # Two-sided exact binomial: 2 * P(X <= 2 | n = 12, p = 1/2) = 2 * 79 / 4096.
    assert result.p_value == pytest.approx(2 * 79 / 4096)
    assert result.p_value == pytest.approx(0.0386, abs=1e-4)
    assert result.p_value == pytest.approx(stats.binomtest(2, 12).pvalue)
    assert result.statistic == 2


def test_mcnemar_ignores_concordant_pairs() -> None:
    assert mcnemar_exact([1, 0, 1, 0], [1, 0, 1, 0]).p_value == 1.0


# --- DeLong ---------------------------------------------------------------------------------


def psi(x: float, y: float) -> float:
    return 1.0 if x > y else 0.5 if x == y else 0.0


def structural_components(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) V10 per positive and V01 per negative, by the O(m n) double loop."""
    pos, neg = score[truth == 1], score[truth == 0]
    v10 = np.array([np.mean([psi(x, y) for y in neg]) for x in pos])
    v01 = np.array([np.mean([psi(x, y) for x in pos]) for y in neg])
    return v10, v01


def loop_covariance(truth: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Cov(AUROC_a, AUROC_b) = S10_ab / m + S01_ab / n, sample covariances of the components."""
    (a10, a01), (b10, b01) = structural_components(truth, a), structural_components(truth, b)
    s10 = np.sum((a10 - a10.mean()) * (b10 - b10.mean())) / (a10.size - 1)
    s01 = np.sum((a01 - a01.mean()) * (b01 - b01.mean())) / (a01.size - 1)
    return s10 / a10.size + s01 / a01.size


# A small hand example with ties within and across classes.
TRUTH = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
SCORE_A = np.array([0.9, 0.8, 0.7, 0.55, 0.4, 0.7, 0.5, 0.4, 0.3, 0.2, 0.2])
SCORE_B = np.array([0.6, 0.9, 0.3, 0.8, 0.5, 0.5, 0.6, 0.1, 0.35, 0.4, 0.2])


def test_delong_variance_matches_the_double_loop() -> None:
    result = delong_auroc(TRUTH, SCORE_A)
    assert result.variance == pytest.approx(loop_covariance(TRUTH, SCORE_A, SCORE_A), rel=1e-12)
    _, covariance = delong_covariance(TRUTH, np.vstack([SCORE_A, SCORE_B]))
    assert covariance[0, 1] == pytest.approx(loop_covariance(TRUTH, SCORE_A, SCORE_B), rel=1e-12)
    assert covariance[1, 1] == pytest.approx(loop_covariance(TRUTH, SCORE_B, SCORE_B), rel=1e-12)


def test_delong_auroc_is_mann_whitney() -> None:
    result = delong_auroc(TRUTH, SCORE_A)
    u = stats.mannwhitneyu(SCORE_A[TRUTH == 1], SCORE_A[TRUTH == 0]).statistic
    assert result.auroc == pytest.approx(u / (5 * 6))
    assert (result.n_positive, result.n_negative) == (5, 6)
    half = 1.959964 * math.sqrt(result.variance)
    assert result.ci_high == pytest.approx(min(1.0, result.auroc + half), abs=1e-6)
    assert result.ci_low == pytest.approx(result.auroc - half, abs=1e-6)


def test_delong_se_agrees_with_a_bootstrap() -> None:
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 2, 300)
    score = truth * 1.0 + rng.normal(size=300)
    result = delong_auroc(truth, score)
    replicates = [delong_auroc(truth[i], score[i]).auroc
                  for i in bootstrap_indices(truth.size, n_boot=1000, seed=1)]
    assert result.se == pytest.approx(np.std(replicates, ddof=1), rel=0.15)


def test_delong_test_against_the_loop_formula() -> None:
    cov = np.array([[loop_covariance(TRUTH, x, y) for y in (SCORE_A, SCORE_B)]
                    for x in (SCORE_A, SCORE_B)])
    difference = delong_auroc(TRUTH, SCORE_A).auroc - delong_auroc(TRUTH, SCORE_B).auroc
    z = difference / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    result = delong_test(TRUTH, SCORE_A, SCORE_B)
    assert result.statistic == pytest.approx(z)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)))


def test_delong_undefined_without_both_classes() -> None:
    assert math.isnan(delong_auroc([1, 1, 1], [0.2, 0.5, 0.9]).auroc)
    assert math.isnan(delong_test([0, 0, 0], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]).p_value)


@pytest.mark.filterwarnings("error")  # numpy's "degrees of freedom <= 0" must not leak
def test_a_single_positive_gives_an_auroc_without_a_variance() -> None:
    result = delong_auroc([1, 0, 0, 0], [0.9, 0.2, 0.5, 0.1])
    assert result.auroc == 1.0 and math.isnan(result.se) and math.isnan(result.ci_low)
    assert math.isnan(delong_test([1, 0, 0], [0.9, 0.2, 0.5], [0.3, 0.2, 0.1]).p_value)


def test_delong_test_identical_scores_has_no_p() -> None:
    assert math.isnan(delong_test(TRUTH, SCORE_A, SCORE_A).p_value)


def test_a_perfect_or_tiny_auroc_has_no_delong_interval() -> None:
    # Perfect separation: DeLong's variance is 0, and 1.000 (1.000-1.000) would be false.
    perfect = delong_auroc([1] * 6 + [0] * 6, list(range(12, 0, -1)))
    assert perfect.auroc == 1 and perfect.variance == 0 and math.isnan(perfect.ci_low)
    tiny = delong_auroc([1, 1, 1, 0, 0, 0, 0, 0, 0], [0.9, 0.3, 0.6, 0.5, 0.2, 0.1, 0.4, 0.7,
                                                       0.05])
    assert 0 < tiny.auroc < 1 and math.isnan(tiny.ci_low)  # 3 positives: under MIN_COUNT


# --- which interval (sonocad.evaluation.intervals) -------------------------------------------


def test_a_proportion_is_exact_where_the_bootstrap_says_nothing() -> None:
    assert proportion_interval(0, 8, 0.0, 0.0) == pytest.approx((0.0, 0.3694, "exact"),
                                                                 abs=1e-4)
    assert proportion_interval(3, 40, 0.0, 0.15)[2] == "exact"  # 3 successes: too few
    assert proportion_interval(20, 40, 0.35, 0.65) == (0.35, 0.65, "bootstrap")
    assert proportion_interval(20, 40, math.nan, math.nan)[2] == "exact"  # one patient
    assert proportion_interval(0, 0, math.nan, math.nan)[2] == "n/a"


def test_an_auroc_or_other_figure_has_none_where_the_bootstrap_degenerates() -> None:
    assert auroc_interval(0.7, 0.9, 5, 5) == (0.7, 0.9, "bootstrap")
    for low, high, positives in [(1.0, 1.0, 10), (0.7, 0.9, 4)]:
        assert math.isnan(auroc_interval(low, high, positives, 10)[0])
    assert spread_interval(0.2, 0.2)[2] == "n/a" and spread_interval(0.1, 0.2)[2] == "bootstrap"


@pytest.mark.parametrize(("stat", "text"), [
    ({"mean": 0.0, "ci_low": 0.0, "ci_high": 0.4593, "n": 6}, "0.000 (0.000-0.459; n=6)"),
    ({"mean": 1.0, "ci_low": math.nan, "ci_high": math.nan, "n": 6}, "1.000 (CI n/a; n=6)"),
    ({"mean": 1.0, "ci_low": None, "ci_high": None, "n": 6}, "1.000 (CI n/a; n=6)"),  # JSON
    ({"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6}, "0.500 (0.400-0.600)"),  # no n known
    ({"mean": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}, "n/a"),
])
def test_format_ci_shows_the_interval_and_n(stat: dict, text: str) -> None:
    assert format_ci(stat) == text
    assert "n=" not in format_ci(stat, with_n=False)


# --- Youden ---------------------------------------------------------------------------------


def test_youden_point_on_a_hand_example() -> None:
    truth = [0, 0, 0, 0, 1, 1, 1, 1]
    score = [0.1, 0.2, 0.35, 0.6, 0.3, 0.7, 0.8, 0.9]
    # score >= 0.7 catches 3 of 4 positives and no negative: J = 0.75 + 1 - 1 = 0.75; every
    # other threshold does worse (>= 0.3: J = 0.5; >= 0.6: J = 0.5).
    point = youden_point(truth, score)
    assert point.threshold == 0.7
    assert (point.sensitivity, point.specificity, point.youden_j) == pytest.approx((0.75, 1, 0.75))


def test_youden_point_takes_the_higher_of_two_equal_points() -> None:
    truth = [1, 1, 0, 1, 0, 0]
    score = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    # >= 0.8: 2/3 + 1 - 1 = 2/3; >= 0.6: 1 + 2/3 - 1 = 2/3, the same J. In floats the lower
    # point's J is one ulp larger, so a float argmax would take it.
    assert 1.0 - 1 / 3 > 2 / 3
    point = youden_point(truth, score)
    assert point.threshold == 0.8
    assert (point.sensitivity, point.specificity) == (2 / 3, 1.0)


def brute_force_youden(truth: np.ndarray, score: np.ndarray) -> tuple[float, Fraction, int, int]:
    """Threshold, J, TP and FP of the exact maximum of J; the highest threshold on ties.

    The candidates are +inf (nothing called positive, the ROC curve's first point) and every
    distinct score.
    """
    positives, negatives = int(truth.sum()), int((~truth).sum())
    best: tuple[float, Fraction, int, int] | None = None
    for threshold in [math.inf, *sorted(set(score.tolist()), reverse=True)]:
        called = score >= threshold
        tp, fp = int((called & truth).sum()), int((called & ~truth).sum())
        j = Fraction(tp, positives) - Fraction(fp, negatives)
        if best is None or j > best[1]:
            best = (threshold, j, tp, fp)
    assert best is not None
    return best


def test_youden_point_matches_an_exact_brute_force() -> None:
    """300 random sets: small integer scores (ties everywhere), prevalence 5-95 %."""
    rng = np.random.default_rng(17)
    for _ in range(300):
        n = int(rng.integers(4, 60))
        truth = rng.random(n) < rng.uniform(0.05, 0.95)
        truth[rng.choice(n, 2, replace=False)] = [True, False]  # both classes
        score = rng.integers(0, int(rng.integers(2, 9)), n).astype(float)
        threshold, j, tp, fp = brute_force_youden(truth, score)
        positives, negatives = int(truth.sum()), int((~truth).sum())
        point = youden_point(truth, score)
        assert point.threshold == threshold
        assert point.sensitivity == tp / positives
        assert point.specificity == 1 - fp / negatives
        assert point.youden_j == pytest.approx(float(j), abs=1e-12)


# --- participant-level paired comparison ----------------------------------------------------

NORMAL_A = np.array([0.71, 0.64, 0.80, 0.55, 0.62, 0.77, 0.69, 0.73, 0.58, 0.66, 0.74, 0.61])
NORMAL_B = NORMAL_A - np.array([0.02, 0.05, 0.01, 0.04, 0.03, 0.06, 0.00, 0.03, 0.04, 0.02,
                                0.05, 0.03])


def test_normal_differences_use_the_paired_t_test() -> None:
    result = paired_comparison(NORMAL_A, NORMAL_B)
    assert stats.shapiro(NORMAL_A - NORMAL_B).pvalue >= 0.05
    expected = stats.ttest_rel(NORMAL_A, NORMAL_B)
    assert result.test == PAIRED_T
    assert (result.statistic, result.p_value) == pytest.approx((expected.statistic,
                                                                expected.pvalue))
    assert result.n == 12
    assert result.mean_difference == pytest.approx(np.mean(NORMAL_A - NORMAL_B))


def test_skewed_differences_use_wilcoxon() -> None:
    b = NORMAL_A - np.array([0.01, 0.0, 0.02, 0.01, 0.4, 0.01, 0.02, 0.5, 0.01, 0.03, 0.02, 0.6])
    assert stats.shapiro(NORMAL_A - b).pvalue < 0.05
    expected = stats.wilcoxon(NORMAL_A, b)
    result = paired_comparison(NORMAL_A, b)
    assert result.test == WILCOXON
    assert (result.statistic, result.p_value) == pytest.approx((expected.statistic,
                                                                expected.pvalue))


def test_images_are_averaged_per_participant_and_nan_pairs_dropped() -> None:
    # Two images per patient (the second a NaN in B for patient p3): the test sees patient means.
    groups = ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4", "p5", "p5"]
    a = np.array([0.7, 0.9, 0.6, 0.4, 0.8, 0.1, 0.5, 0.7, 0.9, 0.5])
    b = np.array([0.6, 0.7, 0.5, 0.4, 0.7, np.nan, 0.6, 0.5, 0.6, 0.4])
    mean_a = np.array([0.8, 0.5, 0.8, 0.6, 0.7])
    mean_b = np.array([0.65, 0.45, 0.7, 0.55, 0.5])
    result = paired_comparison(a, b, groups)
    assert result.n == 5
    assert result.mean_difference == pytest.approx(np.mean(mean_a - mean_b))
    assert result.shapiro_p == pytest.approx(stats.shapiro(mean_a - mean_b).pvalue)
    expected = (stats.ttest_rel if result.test == PAIRED_T else stats.wilcoxon)(mean_a, mean_b)
    assert result.p_value == pytest.approx(expected.pvalue)


def test_too_few_participants_give_no_p() -> None:
    result = paired_comparison([0.5, 0.6], [0.4, 0.7])
    assert result.test == "n/a" and math.isnan(result.p_value) and result.n == 2



@pytest.mark.parametrize("n", [12, 80])  # scipy: P = 1 with a warning at 12, NaN at 80
def test_identical_values_are_no_difference(n: int) -> None:
    values = np.linspace(0.5, 0.9, n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_comparison(values, values.copy())
    assert result.test == WILCOXON
    assert (result.statistic, result.p_value, result.mean_difference) == (0.0, 1.0, 0.0)
    assert result.n == n
