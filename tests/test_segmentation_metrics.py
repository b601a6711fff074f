"""Segmentation metrics against hand-worked cases and independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn import metrics as skm

from sonocad.evaluation.segmentation import (
    PixelCounts,
    confusion,
    hd95,
    image_metrics,
    overlap_metrics,
    pooled_confusion,
    summarise,
)

RATIOS = ("pixel_accuracy", "dice", "iou", "precision", "recall", "specificity")


def square(top: int, left: int, size: int, shape: tuple[int, int] = (8, 8)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def pixel(row: int, col: int, shape: tuple[int, int] = (10, 10)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[row, col] = True
    return mask


def random_masks(seed: int, shape: tuple[int, int] = (40, 40)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(shape) < 0.3, rng.random(shape) < 0.4


def assert_metrics(got: dict[str, float], expected: dict[str, float]) -> None:
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(value), key


NAN = float("nan")


def test_perfect_prediction() -> None:
    mask = square(2, 2, 4)
    got = image_metrics(mask, mask, spacing_mm=(0.1, 0.1))
    assert_metrics(got, {k: 1.0 for k in RATIOS} | {"hd95_px": 0.0, "hd95_mm": 0.0})
    assert got["truth_area_px"] == 16  # the predicted area is the table's lesion_area_px


def test_disjoint_masks() -> None:
    # 8x8 image, 2x2 truth at the top-left corner, 2x2 prediction at the bottom-right corner.
    # tp 0, fp 4, fn 4, tn 56. Boundary distances (each 2x2 is all boundary), per direction:
    # inner corner 5*sqrt2, two edge pixels sqrt(6^2+5^2) = sqrt61, outer corner 6*sqrt2.
    # Pooled sorted: [5r2, 5r2, r61 x4, 6r2, 6r2]; the 95th percentile sits at index
    # 0.95 * 7 = 6.65, between two 6*sqrt2 values.
    got = image_metrics(square(0, 0, 2), square(6, 6, 2))
    expected = {"dice": 0, "iou": 0, "precision": 0, "recall": 0}
    assert_metrics(got, expected | {"specificity": 56 / 60, "pixel_accuracy": 56 / 64})
    assert got["hd95_px"] == pytest.approx(6 * math.sqrt(2))


def test_both_empty_is_agreement_but_precision_and_recall_undefined() -> None:
    empty = np.zeros((8, 8), dtype=bool)
    got = image_metrics(empty, empty, spacing_mm=(0.1, 0.1))
    assert_metrics(
        got,
        {"dice": 1, "iou": 1, "precision": NAN, "recall": NAN, "specificity": 1,
         "pixel_accuracy": 1, "hd95_px": NAN, "hd95_mm": NAN, "truth_area_px": 0},
    )


def test_empty_truth_false_alarm() -> None:
    # 4 false-positive pixels in a 64-pixel image with no lesion: tn 60, fp 4.
    got = image_metrics(np.zeros((8, 8), dtype=bool), square(0, 0, 2))
    assert_metrics(
        got,
        {"dice": 0, "iou": 0, "precision": 0, "recall": NAN, "specificity": 60 / 64,
         "pixel_accuracy": 60 / 64, "hd95_px": NAN},
    )


def test_empty_prediction_missed_lesion() -> None:
    # 4 missed pixels: fn 4, tn 60, no positives predicted.
    got = image_metrics(square(0, 0, 2), np.zeros((8, 8), dtype=bool))
    assert_metrics(
        got,
        {"dice": 0, "iou": 0, "precision": NAN, "recall": 0, "specificity": 1,
         "pixel_accuracy": 60 / 64, "hd95_px": NAN},
    )


def test_specificity_undefined_without_negatives() -> None:
    full = np.ones((4, 4), dtype=bool)
    assert math.isnan(image_metrics(full, full)["specificity"])


def test_square_against_square_shifted_one_column() -> None:
    # 8x8 image. Truth: rows 1-4, cols 1-4 (16 px). Prediction: rows 1-4, cols 2-5 (16 px).
    # Overlap rows 1-4 x cols 2-4 = 12 -> tp 12, fp 4 (col 5), fn 4 (col 1), tn 64 - 20 = 44.
    # dice = 2*12 / (2*12 + 4 + 4) = 24/32 = 0.75;  iou = 12 / 20 = 0.6
    # precision = 12/16 = 0.75;  recall = 12/16 = 0.75;  specificity = 44/48;  accuracy = 56/64
    # HD95: each mask's 12 boundary pixels are either on the other's boundary (distance 0) or one
    # column from it (distance 1) -- 6 of each per direction -> pooled 12 zeros and 12 ones -> 1.
    truth, pred = square(1, 1, 4), square(1, 2, 4)
    assert confusion(truth, pred) == PixelCounts(tp=12, fp=4, fn=4, tn=44)
    assert_metrics(
        image_metrics(truth, pred),
        {"dice": 0.75, "iou": 0.6, "precision": 0.75, "recall": 0.75, "specificity": 44 / 48,
         "pixel_accuracy": 56 / 64, "hd95_px": 1.0, "hd95_mm": NAN},
    )


def test_hd95_single_pixels_in_pixels_and_anisotropic_mm() -> None:
    # Offset (3 rows, 4 columns): 5 px. Rows 0.5 mm, columns 0.2 mm apart:
    # sqrt((3*0.5)^2 + (4*0.2)^2) = sqrt(2.25 + 0.64) = 1.7 mm (2.088 if the axes were swapped).
    truth, pred = pixel(0, 0), pixel(3, 4)
    got = image_metrics(truth, pred, spacing_mm=(0.5, 0.2))
    assert got["hd95_px"] == pytest.approx(5.0)
    assert got["hd95_mm"] == pytest.approx(1.7)
    assert hd95(truth, pred, (1.0, 1.0)) == pytest.approx(5.0)


def test_hd95_concentric_squares() -> None:
    # Truth 10x10 at rows/cols 5-14, prediction 6x6 at rows/cols 7-12, in a 20x20 image.
    # Prediction boundary (20 px): each lies 2 px inside the truth boundary -> 20 x 2.
    # Truth boundary (36 px): per side, the corner (shared by two sides) is sqrt(2^2+2^2) = 2r2 from
    # the nearest prediction corner, the pixel next to each corner sqrt(2^2+1^2) = r5, the other
    # six pixels 2 -> 4 x 2r2, 8 x r5, 24 x 2.
    # Pooled 56 sorted: 44 x 2, 8 x r5, 4 x 2r2; the 95th percentile is at index 0.95 * 55 = 52.25,
    # between indices 52 and 53, both 2*sqrt2.
    truth, pred = square(5, 5, 10, (20, 20)), square(7, 7, 6, (20, 20))
    assert hd95(truth, pred) == pytest.approx(2 * math.sqrt(2))
    assert hd95(pred, truth) == pytest.approx(2 * math.sqrt(2))


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]) -> float:
    """Independent HD95: boundary by explicit neighbour test, all pairwise distances."""

    def boundary_points(mask: np.ndarray) -> np.ndarray:
        p = np.pad(mask, 1)  # off-image counts as background
        inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    d = cdist(boundary_points(a), boundary_points(b))
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), 95))


@pytest.mark.parametrize("seed", range(4))
def test_hd95_matches_brute_force_on_random_masks(seed: int) -> None:
    truth, pred = random_masks(seed, (30, 30))
    truth = truth & (np.arange(30) < 15)[:, None]  # move the masks apart so distances vary
    got = image_metrics(truth, pred, spacing_mm=(0.3, 0.7))
    assert got["hd95_px"] == pytest.approx(brute_force_hd95(truth, pred, (1.0, 1.0)))
    assert got["hd95_mm"] == pytest.approx(brute_force_hd95(truth, pred, (0.3, 0.7)))


@pytest.mark.parametrize("seed", range(5))
def test_ratios_match_independent_formulas_on_random_masks(seed: int) -> None:
    truth, pred = random_masks(seed)
    got = image_metrics(truth, pred)
    t, p = truth.ravel(), pred.ravel()
    assert got["dice"] == pytest.approx(2 * (truth & pred).sum() / (truth.sum() + pred.sum()))
    assert got["dice"] == pytest.approx(skm.f1_score(t, p))
    assert got["iou"] == pytest.approx((truth & pred).sum() / (truth | pred).sum())
    assert got["precision"] == pytest.approx(skm.precision_score(t, p))
    assert got["recall"] == pytest.approx(skm.recall_score(t, p))
    assert got["specificity"] == pytest.approx(skm.recall_score(t, p, pos_label=False))
    assert got["pixel_accuracy"] == pytest.approx(skm.accuracy_score(t, p))


def test_pooled_confusion_is_the_sum_and_matches_sklearn_matrix() -> None:
    pairs = [random_masks(seed) for seed in range(3)] + [
        (np.zeros((40, 40), dtype=bool), np.zeros((40, 40), dtype=bool))
    ]
    pooled = pooled_confusion(pairs)
    per_image = [confusion(t, p) for t, p in pairs]
    for field in ("tp", "fp", "fn", "tn"):
        assert getattr(pooled, field) == sum(getattr(c, field) for c in per_image)
    truth = np.concatenate([t.ravel() for t, _ in pairs])
    pred = np.concatenate([p.ravel() for _, p in pairs])
    np.testing.assert_array_equal(
        pooled.matrix(), skm.confusion_matrix(truth, pred, labels=[False, True])
    )
    np.testing.assert_allclose(
        pooled.matrix("true"),
        skm.confusion_matrix(truth, pred, labels=[False, True], normalize="true"),
    )


def test_matrix_normalisation_of_an_empty_row_is_nan() -> None:
    counts = PixelCounts(tp=0, fp=3, fn=0, tn=1)  # no lesion pixels in the truth
    np.testing.assert_allclose(counts.matrix("true"), [[0.25, 0.75], [NAN, NAN]])
    np.testing.assert_allclose(counts.matrix("all"), [[0.25, 0.75], [0, 0]])


def test_pooled_and_per_image_reductions_differ() -> None:
    # Image A perfect (4 px lesion), image B a 4 px false alarm on a normal image.
    # Per image: dice (1 + 0) / 2 = 0.5. Pooled: tp 4, fp 4, fn 0 -> 8 / 12.
    lesion, empty = square(0, 0, 2), np.zeros((8, 8), dtype=bool)
    pairs = [(lesion, lesion), (empty, lesion)]
    rows = [image_metrics(t, p) for t, p in pairs]
    assert summarise(rows, ["dice"])["dice"]["mean"] == pytest.approx(0.5)
    assert overlap_metrics(pooled_confusion(pairs))["dice"] == pytest.approx(8 / 12)


def test_summarise_excludes_undefined_values_and_counts_them() -> None:
    rows = [
        {"dice": 0.8, "recall": 0.9},
        {"dice": 0.6, "recall": NAN},
        {"dice": 1.0, "recall": NAN},
        {"dice": 0.2, "recall": 0.5},
    ]
    got = summarise(rows, ["dice", "recall"], n_boot=500)
    assert got["dice"]["mean"] == pytest.approx(0.65)
    assert (got["dice"]["n"], got["dice"]["n_excluded"]) == (4, 0)
    assert got["recall"]["mean"] == pytest.approx(0.7)
    assert (got["recall"]["n"], got["recall"]["n_excluded"]) == (2, 2)
    for name in ("dice", "recall"):
        assert got[name]["ci_low"] <= got[name]["mean"] <= got[name]["ci_high"]


@pytest.mark.filterwarnings("error")  # no "mean of empty slice" noise in reports
def test_summarise_all_undefined_gives_nan_without_warnings() -> None:
    got = summarise([{"hd95_mm": NAN}, {"hd95_mm": None}], ["hd95_mm"])["hd95_mm"]
    assert math.isnan(got["mean"]) and math.isnan(got["ci_low"]) and math.isnan(got["ci_high"])
    assert (got["n"], got["n_excluded"]) == (0, 2)


def test_summarise_group_by_resamples_patients() -> None:
    # Two patients, three images each, identical within a patient: resampling images gives
    # intermediate means; resampling patients gives only 0.2, 0.5 or 0.8.
    rows = [{"dice": v, "patient": p} for p, v in [("a", 0.2)] * 3 + [("b", 0.8)] * 3]
    by_image = summarise(rows, ["dice"], n_boot=500)["dice"]
    by_patient = summarise(rows, ["dice"], n_boot=500, group_by="patient")["dice"]
    assert by_patient["ci_low"] == pytest.approx(0.2)
    assert by_patient["ci_high"] == pytest.approx(0.8)
    assert by_image["ci_low"] > 0.2 and by_image["ci_high"] < 0.8


@pytest.mark.parametrize(
    ("truth", "pred", "message"),
    [
        (np.zeros((4, 4), bool), np.zeros((4, 5), bool), "shape"),
        (np.zeros((4, 4), bool), np.full((4, 4), 0.7), "bool"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), "bool"),
        (np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4), bool), "2-D"),
    ],
)
def test_rejects_masks_it_cannot_score(truth: np.ndarray, pred: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        image_metrics(truth, pred)


def test_rejects_bad_spacing() -> None:
    with pytest.raises(ValueError, match="spacing"):
        image_metrics(pixel(0, 0), pixel(1, 1), spacing_mm=(0.1, 0.0))


def test_summarise_gives_a_share_of_images_its_exact_interval() -> None:
    # Dice of normal images is 1 (silence) or 0 (a false alarm): a proportion. None of 8 false
    # alarms: every resample gives 1, and the bootstrap's 1.000 (1.000-1.000) would be a claim
    # eight images cannot make; the exact interval is 0.631-1.
    got = summarise([{"dice": 1.0}] * 8, ["dice"], n_boot=200)["dice"]
    assert (got["mean"], got["n"], got["ci_method"]) == (1.0, 8, "exact")
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.6306, 1.0), abs=1e-4)


def test_summarise_gives_no_interval_where_every_resample_agrees() -> None:
    got = summarise([{"hd95_px": 3.0}] * 6, ["hd95_px"], n_boot=200)["hd95_px"]
    assert got["mean"] == 3.0 and got["ci_method"] == "n/a" and math.isnan(got["ci_low"])
    spread = summarise([{"hd95_px": v} for v in (1.0, 2.0, 4.0, 8.0)], ["hd95_px"],
                       n_boot=200)["hd95_px"]
    assert spread["ci_method"] == "bootstrap" and spread["ci_low"] < spread["ci_high"]
