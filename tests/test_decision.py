"""One answer per image: the rule that reconciles class and outline, the confidence flag, how
both are fitted on validation records, and where they reach the outputs."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from PIL import Image as PILImage

from sonocad.cli import main
from sonocad.data.phantom import make_phantom
from sonocad.evaluation.breakdown import breakdown
from sonocad.evaluation.calibration import calibration_figures
from sonocad.inference.decision import (
    LESION_OUTLINED,
    NO_LESION_OUTLINED,
    TOO_LITTLE_OUTLINED,
    DecisionRule,
    class_margin,
    decide,
    malignancy,
    malignancy_ratio,
    outline_entropy,
)
from sonocad.inference.decision import ruled_out as ruled_out_call
from sonocad.inference.predictor import Predictor
from sonocad.workflows.decision_fit import (
    MAX_FLAGGED,
    ImageRecord,
    final_classes,
    fit_malignancy,
    fit_rule,
    rule_out_point,
)

RULE = DecisionRule(min_lesion_fraction=0.01, score="class_margin", flag_threshold=0.5)
NORMAL = {"normal": 0.6, "benign": 0.3, "malignant": 0.1}


def _map(fraction: float, size: int = 100) -> np.ndarray:
    lesion = np.zeros((size, size), dtype=np.float32)
    lesion.flat[:round(fraction * size * size)] = 0.95
    return lesion


def test_an_outlined_lesion_overrules_normal_and_a_speck_does_not():
    decision = decide(RULE, NORMAL, _map(0.05))
    assert (decision.final_class, decision.reason) == ("benign", LESION_OUTLINED)
    assert decide(RULE, NORMAL, _map(0.001)).final_class == "normal"
    assert decide(RULE, NORMAL, _map(0.0)).reason == ""


def test_a_lesion_call_without_an_outline_keeps_its_call_and_says_so():
    decision = decide(RULE, {"normal": 0.1, "benign": 0.2, "malignant": 0.7}, _map(0.0))
    assert (decision.final_class, decision.reason) == ("malignant", NO_LESION_OUTLINED)


def test_a_lesion_call_with_too_little_outlined_becomes_normal_where_the_rule_says():
    benign = {"normal": 0.3, "benign": 0.6, "malignant": 0.1}
    presence = DecisionRule(0.01, "class_margin", 0.5, min_presence_fraction=0.002)
    decision = decide(presence, benign, _map(0.001))
    assert (decision.final_class, decision.reason) == ("normal", TOO_LITTLE_OUTLINED)
    assert decide(presence, benign, _map(0.05)).final_class == "benign"
    assert decide(RULE, benign, _map(0.0)).final_class == "benign"  # 0: never overruled
    assert DecisionRule.from_dict(presence.to_dict()) == presence
    assert DecisionRule.from_dict({"score": "combined"}).min_presence_fraction == 0.0


def test_the_flag_follows_the_uncertainty_score():
    sure = decide(RULE, {"normal": 0.02, "benign": 0.95, "malignant": 0.03}, _map(0.1))
    torn = decide(RULE, {"normal": 0.05, "benign": 0.5, "malignant": 0.45}, _map(0.1))
    assert sure.uncertainty == pytest.approx(0.08) and not sure.low_confidence
    assert torn.uncertainty == pytest.approx(0.95) and torn.low_confidence


def test_outline_entropy_is_low_for_crisp_maps_and_high_for_fuzzy_ones():
    crisp, fuzzy = _map(0.1), np.full((100, 100), 0.5, dtype=np.float32)
    assert outline_entropy(NORMAL, crisp) < 0.5 < outline_entropy(NORMAL, fuzzy)
    assert class_margin(NORMAL, crisp) == pytest.approx(0.7)


def test_the_rule_round_trips_through_json_with_never_as_none():
    never = DecisionRule(math.inf, "combined", math.inf, "validation")
    assert never.to_dict()["min_lesion_fraction"] is None
    assert DecisionRule.from_dict(never.to_dict()) == never
    with pytest.raises(ValueError, match="unknown uncertainty score"):
        DecisionRule(0.01, "tea leaves", 0.5)


def _records(seed: int = 0) -> list[ImageRecord]:
    """Normal images with specks, lesions called normal with real outlines, and failures that
    the class margin sees (torn probabilities) and the outline entropy does not."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(40):
        normal = i < 10
        called_normal = normal or i < 15
        torn = i % 4 == 0
        top = 0.5 if torn else 0.9
        probabilities = ({"normal": top, "benign": 1 - top - 0.02, "malignant": 0.02}
                         if called_normal else
                         {"normal": 0.05, "benign": top, "malignant": 0.95 - top})
        records.append(ImageRecord(
            label="normal" if normal else "benign", probabilities=probabilities,
            lesion_fraction=float(rng.uniform(0, 0.003)) if normal else 0.05,
            scores={"class_margin": 1 - top + float(rng.uniform(0, 0.01)),
                    "outline_entropy": float(rng.uniform()), "combined": float(rng.uniform())},
            iou=None if normal else (0.3 if torn else 0.8)))
    return records


def test_fit_keeps_normals_normal_and_picks_the_score_that_sees_failures():
    records = _records()
    rule, report = fit_rule(records, chosen_on="synthetic")
    calls = final_classes(records, rule)
    assert all(call == "normal" for call, r in zip(calls, records) if r.label == "normal")
    assert all(call == "benign" for call, r in zip(calls, records) if r.label == "benign")
    assert rule.min_lesion_fraction == 0.005  # the least that leaves the specks alone
    assert rule.score == "class_margin" and report["failure_auroc"]["class_margin"] > 0.9
    assert report["flagged_share"] <= MAX_FLAGGED and rule.chosen_on == "synthetic"


def test_too_few_failures_keep_the_starting_models_flag():
    # A fine-tuning validation subset of a few good images: nothing to read a threshold from.
    few = [r for r in _records() if r.label == "normal" or (r.iou or 0) > 0.5][:8]
    alone, _ = fit_rule(few)
    assert math.isinf(alone.flag_threshold)  # on its own it would never flag
    initial = DecisionRule(0.005, "outline_entropy", 0.42, malignancy=(1.3, -0.2))
    rule, report = fit_rule(few, fallback=initial)
    assert (rule.score, rule.flag_threshold) == ("outline_entropy", 0.42)
    assert rule.malignancy == (1.3, -0.2)  # no malignant image to scale on either
    assert "kept from the model it started from: flag" in rule.chosen_on
    assert len(report["kept_from_init"]) == 2
    # With failures enough, the new images decide the flag.
    refitted, report = fit_rule(_records(), fallback=initial)
    assert refitted.score == "class_margin" and math.isfinite(refitted.flag_threshold)
    assert not any(kept.startswith("flag") for kept in report["kept_from_init"])


def _window_records(n: int, lesion_fraction: float) -> list[ImageRecord]:
    """Lesion-free windows the class head calls benign, with (almost) nothing outlined."""
    return [ImageRecord(label="normal", probabilities={"normal": 0.3, "benign": 0.6,
                                                       "malignant": 0.1},
                        lesion_fraction=lesion_fraction,
                        scores={"class_margin": 0.7, "outline_entropy": 0.5, "combined": 0.6},
                        iou=None) for _ in range(n)]


def test_fit_reads_presence_from_the_outline_when_no_lesion_is_lost():
    records = _records() + _window_records(20, 0.0)
    rule, report = fit_rule(records, chosen_on="synthetic")
    calls = final_classes(records, rule)
    assert rule.min_presence_fraction > 0
    assert all(call == "normal" for call, r in zip(calls, records) if r.label == "normal")
    assert all(call == "benign" for call, r in zip(calls, records) if r.label == "benign")
    assert any(row["min_presence_fraction"] > 0 and row["allowed"]
               for row in report["fractions"])


def test_fit_never_reads_presence_at_the_cost_of_lesions_called_normal():
    lesions_with_specks = [ImageRecord(label="benign", probabilities={
        "normal": 0.1, "benign": 0.8, "malignant": 0.1}, lesion_fraction=0.0008,
        scores={"class_margin": 0.3, "outline_entropy": 0.5, "combined": 0.4}, iou=0.1)
        for _ in range(3)]
    records = _records() + _window_records(20, 0.0) + lesions_with_specks
    rule, _ = fit_rule(records, max_lesion_missed=0.01)
    calls = final_classes(records, rule)
    lesions = [call for call, r in zip(calls, records) if r.label != "normal"]
    assert sum(call == "normal" for call in lesions) <= 0.01 * len(lesions)
    assert rule.min_presence_fraction == 0.0005  # the windows' nothing, not the specks


def test_final_calls_reach_the_breakdown_with_exact_cis():
    rows = [{"image_id": str(i), "patient_id": None, "label": "benign", "truth_lesion": 1,
             "iou": 0.8, "dice": 0.9, "final_class": "normal" if i < 2 else "benign",
             "low_confidence": int(i < 5)} for i in range(20)]
    figures = breakdown(rows, "source", None, n_boot=50)["groups"]["pooled"]
    assert figures["final_lesion_called_normal"]["mean"] == pytest.approx(0.1)
    assert figures["final_lesion_called_normal"]["ci_low"] < 0.1 < \
        figures["final_lesion_called_normal"]["ci_high"]
    assert figures["low_confidence"]["mean"] == pytest.approx(0.25)
    assert figures["final_accuracy"]["mean"] == pytest.approx(0.9)


def test_the_bundled_model_carries_a_rule_that_predict_applies(tmp_path):
    predictor = Predictor.default()
    assert predictor.rule is not None and "validation" in predictor.rule.chosen_on
    image = tmp_path / "scan.png"
    PILImage.fromarray(make_phantom("benign", size=(120, 160), seed=5).image).save(image)
    assert main(["predict", str(image), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "predictions.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["final_class"] in ("normal", "benign", "malignant")
    assert row["predicted_class"] in ("normal", "benign", "malignant")
    assert 0 <= float(row["uncertainty"]) and row["low_confidence"] in ("0", "1")


# --- calibrated malignancy and the rule-out point ------------------------------------------

def _lesion_records(n: int, seed: int = 0) -> list[ImageRecord]:
    """Lesion images whose class head is over-confident: true P(malignant) = sigmoid(z), the
    head says sigmoid(3 z)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        z = rng.normal(0, 1.5)
        malignant = rng.random() < 1 / (1 + math.exp(-z))
        ratio = 1 / (1 + math.exp(-3 * z))
        records.append(ImageRecord(
            label="malignant" if malignant else "benign",
            probabilities={"normal": 0.1, "benign": 0.9 * (1 - ratio), "malignant": 0.9 * ratio},
            lesion_fraction=0.05, scores={"class_margin": 0.2, "outline_entropy": 0.2,
                                          "combined": 0.2}, iou=0.8))
    return records


def test_platt_scaling_undoes_an_over_confident_head():
    records = _lesion_records(3000)
    slope, intercept = fit_malignancy(records)
    assert slope == pytest.approx(1 / 3, abs=0.05) and abs(intercept) < 0.1
    rule = DecisionRule(math.inf, "class_margin", math.inf, malignancy=(slope, intercept))
    raw = malignancy_ratio(records[0].probabilities)
    assert malignancy(rule, records[0].probabilities) == pytest.approx(
        1 / (1 + math.exp(-(slope * math.log(raw / (1 - raw)) + intercept))))
    truth = [r.label == "malignant" for r in records]
    calibrated = calibration_figures(truth, [malignancy(rule, r.probabilities) for r in records],
                                     n_boot=20)
    raw_figures = calibration_figures(truth, [malignancy_ratio(r.probabilities)
                                              for r in records], n_boot=20)
    assert calibrated["calibration_slope"]["mean"] == pytest.approx(1.0, abs=0.05)
    assert raw_figures["calibration_slope"]["mean"] == pytest.approx(1 / 3, abs=0.05)
    assert calibrated["brier"]["mean"] < raw_figures["brier"]["mean"]


def test_calibration_figures_agree_with_statsmodels():
    import statsmodels.api as sm

    rng = np.random.default_rng(1)
    p = rng.uniform(0.02, 0.98, 400)
    y = rng.random(400) < p ** 1.5
    x = np.log(p / (1 - p))
    slope = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit().params[1]
    intercept = sm.GLM(y, np.ones((400, 1)), family=sm.families.Binomial(),
                       offset=x).fit().params[0]
    figures = calibration_figures(y, p, n_boot=50)
    assert figures["calibration_slope"]["mean"] == pytest.approx(slope, rel=1e-6)
    assert figures["calibration_intercept"]["mean"] == pytest.approx(intercept, rel=1e-6)
    assert figures["brier"]["mean"] == pytest.approx(np.mean((p - y) ** 2))
    low, high = figures["calibration_slope"]["ci_low"], figures["calibration_slope"]["ci_high"]
    assert low < slope < high
    assert math.isnan(calibration_figures([True] * 5, [0.9] * 5)["calibration_slope"]["mean"])


def test_the_rule_out_point_keeps_98_percent_of_malignant_lesions_above_it():
    records = _lesion_records(1000, seed=2)
    rule, _ = fit_rule(records)
    assert rule.malignancy is not None and rule.rule_out_below is not None
    calls = final_classes(records, rule)
    malignant = [(r, call) for r, call in zip(records, calls) if r.label == "malignant"]
    ruled_out = [ruled_out_call(rule, call, malignancy(rule, r.probabilities))
                 for r, call in malignant]
    assert 0 < sum(ruled_out) <= 0.02 * len(malignant)
    benign = [ruled_out_call(rule, call, malignancy(rule, r.probabilities))
              for r, call in zip(records, calls) if r.label == "benign"]
    assert sum(benign) > 0.2 * len(benign)  # it does spare some benign lesions a biopsy


def test_a_normal_call_is_ruled_out_and_malignant_ones_called_normal_spend_the_allowance():
    records = _lesion_records(200, seed=3)
    rule, _ = fit_rule(records)
    assert ruled_out_call(rule, "normal", 0.99) is True
    # Every malignant record called normal: none may be ruled out besides them.
    calls = ["normal" if r.label == "malignant" else "benign" for r in records]
    assert rule_out_point(records, calls, rule) == 0.0
    no_scaling = DecisionRule(math.inf, "class_margin", math.inf)
    assert ruled_out_call(no_scaling, "benign", 0.01) is None


def test_the_decision_carries_calibrated_malignancy_and_rule_out_to_the_table():
    rule = DecisionRule(math.inf, "class_margin", math.inf, malignancy=(0.5, 0.0),
                        rule_out_below=0.3)
    decision = decide(rule, {"normal": 0.1, "benign": 0.8, "malignant": 0.1}, _map(0.05))
    assert decision.p_malignant == pytest.approx(1 / (1 + math.exp(-0.5 * math.log(1 / 8))))
    assert decision.rule_out is True  # 0.26 < 0.3
    assert DecisionRule.from_dict(rule.to_dict()) == rule
    rows = [{"image_id": str(i), "patient_id": None, "label": label, "final_class": label,
             "low_confidence": 0, "p_malignant": p, "rule_out": int(p < 0.3)}
            for i, (label, p) in enumerate([("malignant", 0.9), ("malignant", 0.2),
                                            ("benign", 0.1), ("benign", 0.5)] * 5)]
    figures = breakdown(rows, "source", None, n_boot=20)["groups"]["pooled"]
    assert figures["rule_out_sensitivity"]["mean"] == pytest.approx(0.5)
    assert figures["rule_out_specificity"]["mean"] == pytest.approx(0.5)
    assert "calibration_slope" in figures and "brier" in figures
