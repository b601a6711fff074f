"""Classification metrics against scikit-learn and independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from sonocad.evaluation.classification import (
    MAX_ROC_POINTS,
    classification_metrics,
    expected_calibration_error,
    reliability,
)

CLASSES = ["normal", "benign", "malignant"]


def random_case(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities that carry some signal, so metrics are away from chance."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + 1.5 * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


def means(result: dict) -> dict[str, float]:
    return {name: stat["mean"] for name, stat in result["metrics"].items()}


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, np.ndarray, dict]:
    y, probs = random_case(120)
    return y, probs, classification_metrics(y, probs, CLASSES, n_boot=100)


def test_point_estimates_match_scikit_learn(case) -> None:
    y, probs, result = case
    got, pred = means(result), probs.argmax(1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["macro_auroc"] == pytest.approx(
        skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for k, name in enumerate(CLASSES):
        assert got[f"precision_{name}"] == pytest.approx(precision[k])
        assert got[f"recall_{name}"] == pytest.approx(recall[k])
        assert got[f"f1_{name}"] == pytest.approx(f1[k])
        assert got[f"auroc_{name}"] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]))
        assert result["support"][name] == support[k]
        assert result["roc"][name]["auroc"] == pytest.approx(got[f"auroc_{name}"])
    assert result["confusion_matrix"]["labels"] == CLASSES
    assert result["confusion_matrix"]["matrix"] == skm.confusion_matrix(y, pred).tolist()


def test_tied_scores_count_half_as_in_scikit_learn() -> None:
    y, probs = random_case(90, seed=3)
    probs = probs.round(1)  # many ties
    got = means(classification_metrics(y, probs, CLASSES, n_boot=10))
    for k, name in enumerate(CLASSES):
        assert got[f"auroc_{name}"] == pytest.approx(skm.roc_auc_score(y == k, probs[:, k]))


def test_benign_vs_malignant_auroc_uses_only_those_images(case) -> None:
    y, probs, result = case
    kept = y > 0
    score = probs[kept, 2] / (probs[kept, 1] + probs[kept, 2])
    expected = skm.roc_auc_score(y[kept] == 2, score)
    stat = result["metrics"]["benign_vs_malignant_auroc"]
    assert stat["mean"] == pytest.approx(expected)
    assert (stat["n"], stat["n_excluded"]) == (kept.sum(), (~kept).sum())
    assert result["roc"]["benign_vs_malignant"]["auroc"] == pytest.approx(expected)


def test_no_benign_vs_malignant_without_both_classes() -> None:
    y, probs = random_case(30)
    result = classification_metrics(y, probs, ["normal", "benign", "cyst"], n_boot=10)
    assert "benign_vs_malignant_auroc" not in result["metrics"]
    assert "benign_vs_malignant" not in result["roc"]


def independent_ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Guo et al. (2017): bins ((m-1)/M, m/M], the first also holding 0, walked one by one."""
    total = 0.0
    for m in range(1, n_bins + 1):
        low, high = (m - 1) / n_bins, m / n_bins
        inside = [(c, ok) for c, ok in zip(confidence, correct)
                  if (low < c <= high) or (m == 1 and c == 0)]
        if inside:
            accuracy = sum(ok for _, ok in inside) / len(inside)
            mean_confidence = sum(c for c, _ in inside) / len(inside)
            total += len(inside) / len(confidence) * abs(accuracy - mean_confidence)
    return total


def test_ece_matches_an_independent_loop(case) -> None:
    y, probs, result = case
    confidence, correct = probs.max(1), probs.argmax(1) == y
    expected = independent_ece(confidence, correct)
    assert expected > 0.01  # the check means something
    assert result["metrics"]["ece"]["mean"] == pytest.approx(expected)


def test_ece_bin_edges_and_extremes() -> None:
    # 0.1, 0.2, ... sit exactly on edges, where float rounding decides the bin; both sides
    # must agree on every one.
    confidence = np.round(np.arange(0, 1.0001, 0.05), 2)
    correct = np.arange(confidence.size) % 3 == 0
    assert expected_calibration_error(confidence, correct) == pytest.approx(
        independent_ece(confidence, correct))
    assert expected_calibration_error([1.0, 1.0], [True, True]) == 0
    assert expected_calibration_error([0.9, 0.9], [False, False]) == pytest.approx(0.9)


def test_reliability_curve_is_sklearns_and_counts_match_its_bins(case) -> None:
    y, probs, result = case
    calibration = result["calibration"]
    accuracy, confidence = calibration_curve(probs.argmax(1) == y, probs.max(1), n_bins=10)
    assert calibration["accuracy"] == pytest.approx(accuracy.tolist())
    assert calibration["confidence"] == pytest.approx(confidence.tolist())
    counts = np.array(calibration["counts"])
    assert counts.sum() == len(y) and (counts > 0).sum() == len(calibration["accuracy"])
    assert calibration == reliability(probs.max(1), probs.argmax(1) == y)


def test_roc_points_are_thinned_and_json_safe() -> None:
    y, probs = random_case(2000, seed=3)
    curve = classification_metrics(y, probs, CLASSES, n_boot=1)["roc"]["malignant"]
    full_fpr, full_tpr, _ = skm.roc_curve(y == 2, probs[:, 2])
    assert full_fpr.size > MAX_ROC_POINTS >= len(curve["fpr"]) > MAX_ROC_POINTS * 0.9
    assert (curve["fpr"][0], curve["tpr"][0], curve["fpr"][-1], curve["tpr"][-1]) == (0, 0, 1, 1)
    assert curve["thresholds"][0] is None and all(
        math.isfinite(t) for t in curve["thresholds"][1:])
    assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["tpr"]) >= 0)


def test_cis_contain_the_estimate_and_are_deterministic(case) -> None:
    y, probs, result = case
    for name, stat in result["metrics"].items():
        assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"], name
        assert stat["ci_low"] < stat["ci_high"], name
    again = classification_metrics(y, probs, CLASSES, n_boot=100)
    assert again["metrics"] == result["metrics"]
    other_seed = classification_metrics(y, probs, CLASSES, n_boot=100, seed=1)
    assert other_seed["metrics"]["accuracy"] != result["metrics"]["accuracy"]


def test_patient_groups_widen_the_interval() -> None:
    # 12 patients x 10 near-identical images: resampling patients knows there are 12 units.
    rng = np.random.default_rng(5)
    patient_label = rng.integers(0, 3, 12)
    patient_probs = rng.dirichlet(np.ones(3), 12)
    patients = np.repeat(np.arange(12), 10)
    y, probs = patient_label[patients], patient_probs[patients]

    def width(groups) -> float:
        stat = classification_metrics(y, probs, CLASSES, groups=groups, n_boot=150)
        return stat["metrics"]["accuracy"]["ci_high"] - stat["metrics"]["accuracy"]["ci_low"]

    assert width(patients) > 2 * width(None)


def test_undefined_resamples_are_left_out_of_the_interval() -> None:
    # The 5 malignant images are one patient's, of 8: a third of the resamples lack them and
    # their AUROC is undefined there; the interval comes from the others instead of turning NaN.
    y, probs = random_case(40, seed=2)
    y[y == 2] = 1
    y[:5] = 2
    patients = np.repeat(np.arange(8), 5)
    stat = classification_metrics(y, probs, CLASSES, groups=patients,
                                  n_boot=100)["metrics"]["auroc_malignant"]
    assert stat["ci_method"] == "bootstrap"
    assert not math.isnan(stat["ci_low"]) and stat["ci_low"] <= stat["ci_high"]


def test_degenerate_intervals_are_exact_or_not_estimable() -> None:
    # Six images, every one right: the bootstrap would say 1.000 (1.000-1.000) for all.
    y = np.array([1, 2, 1, 2, 1, 2])
    probs = np.array([[0.1, 0.8, 0.1], [0.1, 0.1, 0.8]] * 3)
    got = classification_metrics(y, probs, CLASSES, n_boot=100)["metrics"]
    accuracy = got["accuracy"]
    assert (accuracy["ci_method"], accuracy["n"]) == ("exact", 6)
    assert (accuracy["ci_low"], accuracy["ci_high"]) == pytest.approx((0.5407, 1.0), abs=1e-4)
    called_normal = got["lesion_called_normal"]  # 0 of 6: exact, not 0.000 (0.000-0.000)
    assert called_normal["mean"] == 0 and called_normal["ci_high"] == pytest.approx(0.4593,
                                                                                   abs=1e-4)
    assert (got["recall_malignant"]["n"], got["precision_malignant"]["n"]) == (3, 3)
    auroc = got["benign_vs_malignant_auroc"]  # perfect separation of 3 and 3: no interval
    assert auroc["mean"] == 1 and auroc["ci_method"] == "n/a" and math.isnan(auroc["ci_low"])
    assert got["macro_f1"]["ci_method"] == "n/a"  # every resample 1: zero width, none given


def test_a_class_of_few_images_has_no_auroc_interval() -> None:
    y, probs = random_case(60, seed=2)
    y[y == 2] = 1
    y[:4] = 2  # four malignant images: a percentile interval of their AUROC would mislead
    stat = classification_metrics(y, probs, CLASSES, n_boot=100)["metrics"]["auroc_malignant"]
    assert not math.isnan(stat["mean"]) and stat["ci_method"] == "n/a"
    assert math.isnan(stat["ci_low"]) and math.isnan(stat["ci_high"])


def test_undefined_metrics_are_nan() -> None:
    # No malignant image and none predicted: its recall, F1, AUROC and the macro AUROC are
    # undefined; precision of a class never predicted too.
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0], [0.7, 0.3, 0.0]])
    got = means(classification_metrics(y, probs, CLASSES, n_boot=20))
    for name in ("recall_malignant", "f1_malignant", "auroc_malignant", "macro_auroc",
                 "precision_malignant", "benign_vs_malignant_auroc"):
        assert math.isnan(got[name]), name
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, probs.argmax(1), average="macro"))


def test_single_image_has_only_exact_intervals() -> None:
    # Nothing to resample: a proportion still has its exact interval, nothing else has one.
    result = classification_metrics([1], [[0.1, 0.8, 0.1]], CLASSES)["metrics"]
    assert result["accuracy"]["mean"] == 1 and result["accuracy"]["ci_method"] == "exact"
    assert result["accuracy"]["ci_low"] == pytest.approx(0.025)
    assert math.isnan(result["macro_f1"]["ci_low"])


@pytest.mark.parametrize(
    ("y", "probs", "names", "message"),
    [
        ([0, 1], [[0.5, 0.5, 0.0]] * 2, CLASSES[:2], "shape"),
        ([0, 3], [[0.5, 0.5, 0.0]] * 2, CLASSES, "class indices"),
        ([0.0, 1.0], [[0.5, 0.5, 0.0]] * 2, CLASSES, "class indices"),
        ([0, 1], [[1.5, -0.5, 0.0]] * 2, CLASSES, "probabilities"),
        ([], np.zeros((0, 3)), CLASSES, "N > 0"),
        ([0, 1], [[0.5, 0.5, 0.0]] * 2, ["a", "a", "b"], "distinct"),
    ],
)
def test_rejects_bad_inputs(y, probs, names, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        classification_metrics(y, probs, names)
