"""Issue 30 item 5: patient-level results, the P(malignant) reliability curve and the file column
of `sonocad evaluate`, on hand-made tables and on BUS-BRA's real patient ids (skipped where the
data set is absent)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.calibration import calibration_curve

from conftest import CLS_CLASSES, run_cli, write_checkpoint
from sonocad.data.adapters import open_dataset
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.evaluation.calibration import reliability_curve
from sonocad.evaluation.figures import reliability_curve_figure
from sonocad.evaluation.malignancy import CALIBRATED, RATIO, lesion_scores, malignancy_calibration
from sonocad.evaluation.patients import patient_level, patient_table
from sonocad.evaluation.summary import format_summary
from sonocad.predictions import read_predictions
from sonocad.workflows.evaluate import evaluate

SPLITS = Path(__file__).resolve().parents[1] / "benchmarks" / "splits"


def row(image: str, patient: str | None, label: str, p: float, **more) -> dict:
    return {"image_id": image, "patient_id": patient, "source": "s", "label": label,
            "p_malignant": p, **more}


# --- the patient table and its figures -------------------------------------------------------

def test_a_patient_is_malignant_if_any_image_is_and_scored_by_the_max_or_mean() -> None:
    rows = [row("a1", "A", "benign", 0.2), row("a2", "A", "malignant", 0.9),
            row("b1", "B", "benign", 0.1), row("b2", "B", "benign", 0.7),
            row("n1", "N", "normal", 0.99),  # a normal image says nothing of malignancy
            row("x1", None, "malignant", 0.8)]  # no patient id: left out, counted
    scores = lesion_scores(rows)
    by_max = {r["patient_id"]: r for r in patient_table(scores, "max")}
    by_mean = {r["patient_id"]: r for r in patient_table(scores, "mean")}
    assert set(by_max) == {"A", "B"}
    assert (by_max["A"]["label"], by_max["B"]["label"]) == ("malignant", "benign")
    assert (by_max["A"]["score"], by_max["B"]["score"]) == (0.9, 0.7)
    assert by_mean["A"]["score"] == pytest.approx(0.55)
    assert (by_max["B"]["called"], by_mean["B"]["called"]) == ("malignant", "benign")
    assert by_max["A"]["image_ids"] == "a1;a2" and by_max["A"]["n_malignant_images"] == 1
    figures, _ = patient_level(scores, "max", n_boot=50)
    assert (figures["n_patients"], figures["n_images"], figures["n_images_without_patient"]) \
        == (2, 4, 1)


def test_patient_ids_are_per_source() -> None:
    rows = [row("a", "1", "benign", 0.2), {**row("b", "1", "malignant", 0.9), "source": "t"}]
    assert len(patient_table(lesion_scores(rows))) == 2


def test_a_patient_is_ruled_out_only_when_every_image_is() -> None:
    rows = [row("a1", "A", "malignant", 0.3, rule_out=1), row("a2", "A", "benign", 0.6,
                                                                rule_out=0),
            row("b1", "B", "benign", 0.1, rule_out=1), row("b2", "B", "benign", 0.2,
                                                           rule_out=1)]
    figures, table = patient_level(lesion_scores(rows), n_boot=50)
    assert [r["ruled_out"] for r in table] == [0, 1]
    assert figures["rule_out_sensitivity"]["mean"] == 1  # A kept for biopsy
    assert figures["rule_out_specificity"]["mean"] == 1  # B spared
    assert figures["rule_out_sensitivity"]["ci_method"] == "exact"  # one patient each


def test_the_score_is_the_calibrated_one_where_the_table_has_it() -> None:
    raw = [{"image_id": "a", "label": "malignant", "prob_benign": 0.2, "prob_malignant": 0.6,
            "prob_normal": 0.2}, {"image_id": "b", "label": "benign", "prob_benign": 0.0,
                                  "prob_malignant": 0.0, "prob_normal": 1.0}]
    scores = lesion_scores(raw)
    assert scores.name == RATIO and scores.score == pytest.approx([0.75, 0.5])  # 0 / 0: 0.5
    calibrated = lesion_scores([{**r, "p_malignant": 0.4} for r in raw])
    assert calibrated.name == CALIBRATED and calibrated.score.tolist() == [0.4, 0.4]
    assert lesion_scores([{"image_id": "a", "label": "malignant", "iou": 0.5}]) is None


# --- the reliability curve --------------------------------------------------------------------

def test_reliability_curve_matches_scikit_learn_and_counts_every_image() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=300)
    y = rng.uniform(size=300) < p
    curve = reliability_curve(y, p)
    observed, predicted = calibration_curve(y, p, n_bins=10)
    assert [v for v in curve["observed"] if v is not None] == pytest.approx(observed.tolist())
    assert [v for v in curve["predicted"] if v is not None] == pytest.approx(predicted.tolist())
    assert sum(curve["counts"]) == 300 and len(curve["edges"]) == 11
    for k, count in enumerate(curve["counts"]):
        if count:
            assert curve["ci_low"][k] <= curve["observed"][k] <= curve["ci_high"][k]


def test_reliability_figure_is_a_full_width_png(tmp_path: Path) -> None:
    from sonocad.evaluation.figures import save_figure

    rng = np.random.default_rng(4)
    rows = [row(f"i{k}", f"p{k // 2}", "malignant" if rng.uniform() < 0.4 else "benign",
                float(rng.uniform())) for k in range(80)]
    calibration = malignancy_calibration(lesion_scores(rows), n_boot=50)
    save_figure(tmp_path / "r.png", reliability_curve_figure(calibration))
    with Image.open(tmp_path / "r.png") as image:
        assert image.size[0] >= 1400 and image.size[0] > image.size[1]


# --- BUS-BRA: real patient ids ----------------------------------------------------------------

def test_patient_level_on_busbra_counts_its_patients(busbra_root: Path) -> None:
    samples = [s for s in open_dataset(busbra_root) if s.label in ("benign", "malignant")]
    rng = np.random.default_rng(0)
    # A score with some signal: malignant images higher, on average.
    rows = [row(s.image_id, s.patient_id, s.label, float(np.clip(
        rng.normal(0.65 if s.label == "malignant" else 0.35, 0.2), 0, 1)), source=s.source)
        for s in samples]
    figures, table = patient_level(lesion_scores(rows), n_boot=200)
    patients = {s.patient_id for s in samples}
    assert figures["n_patients"] == len(table) == len(patients) > 1000
    malignant = {s.patient_id for s in samples if s.label == "malignant"}
    assert figures["n_malignant"] == len(malignant)
    for name in ("benign_vs_malignant_auroc", "sensitivity", "specificity"):
        stat = figures[name]
        assert stat["ci_method"] == "bootstrap", name
        assert stat["ci_low"] < stat["mean"] < stat["ci_high"], name
    assert figures["sensitivity"]["n"] == len(malignant)
    assert figures["specificity"]["n"] == len(patients - malignant)


@pytest.fixture(scope="module")
def busbra_evaluation(busbra_root: Path, tmp_path_factory: pytest.TempPathFactory):
    """A small random classifier evaluated per patient on BUS-BRA's first 30 test images."""
    import torch

    from sonocad.models import create_model

    root = tmp_path_factory.mktemp("busbra_patients")
    torch.manual_seed(0)
    model = create_model("resnet34", num_classes=3)  # untrained: scores vary by image
    checkpoint = write_checkpoint(root / "random.pt", "classification", "resnet34",
                                  {"num_classes": 3}, CLS_CLASSES, model.state_dict())
    split = root / "split.json"
    write_split(split, SplitFile("busbra", 0, "first test images",
                                 {"test": read_split(SPLITS / "busbra.json").subsets["test"][:30]}))
    result = evaluate(checkpoint, busbra_root, f"{split}:test", root / "eval", n_boot=200,
                      per="patient", patient_score="max")
    return result, checkpoint, split


def test_evaluate_per_patient_writes_the_patient_table_and_figures(busbra_evaluation) -> None:
    result, _, _ = busbra_evaluation
    out = result.out_dir
    rows = read_predictions(out / "predictions.csv")
    patients = {r["patient_id"] for r in rows}
    level = json.loads((out / "metrics.json").read_text())["patient_level"]
    assert level["n_patients"] == len(patients) == 18 and level["n_images"] == 30
    with open(out / "patients.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert sorted(r["patient_id"] for r in table) == sorted(patients)
    assert sum(int(r["n_images"]) for r in table) == 30
    for name in ("benign_vs_malignant_auroc", "sensitivity", "specificity"):
        stat = level[name]
        assert stat["n"] and stat["ci_method"] in ("bootstrap", "exact", "n/a")
        if stat["ci_method"] != "n/a":
            assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"], name
    text = format_summary(result.metrics)
    assert "per patient: 18 patients" in text and "n=18)" in text


def test_evaluate_adds_each_images_file_and_the_reliability_curve(busbra_evaluation,
                                                                   busbra_root: Path) -> None:
    result, _, _ = busbra_evaluation
    out = result.out_dir
    with open(out / "predictions.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert "file" in header
    for r in read_predictions(out / "predictions.csv"):
        assert Path(r["file"]) == busbra_root / r["image_id"] and Path(r["file"]).is_file()
    calibration = json.loads((out / "metrics.json").read_text())["malignancy_calibration"]
    assert calibration["n_images"] == 30 and sum(calibration["reliability"]["counts"]) == 30
    assert (out / calibration["figure"]).is_file()


def test_per_patient_is_refused_in_one_line_where_it_cannot_be_answered(
        busbra_evaluation, busbra_root: Path, lesion_everywhere: Path, tmp_path,
        capsys) -> None:
    _, checkpoint, split = busbra_evaluation
    # The same images as a manifest without a patient_id column.
    (tmp_path / "Images").symlink_to(busbra_root / "Images")
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        writer.writerows([s.image_id, s.label] for s in open_dataset(busbra_root))
    refused = tmp_path / "refused"
    code, err = run_cli(["evaluate", checkpoint, "--data", manifest, "--split", f"{split}:test",
                         "--per", "patient", "--out", refused], capsys)
    assert code != 0 and len(err) == 1, err
    assert "--per patient: no image of" in err[0] and "has a patient id" in err[0]
    code, err = run_cli(["evaluate", checkpoint, "--data", manifest, "--split", f"{split}:test",
                         "--patient-score", "mean", "--out", refused], capsys)
    assert code != 0 and err == ["sonocad: error: --patient-score needs --per patient"]
    code, err = run_cli(["evaluate", lesion_everywhere, "--data", busbra_root, "--split",
                         f"{split}:test", "--per", "patient", "--out", refused], capsys)
    assert code != 0 and err == ["sonocad: error: --per patient needs a model that scores "
                                 "benign against malignant; this one has no class head"]
    assert not refused.exists()


def test_a_patient_without_lesion_images_is_no_patient() -> None:
    rows = [row("n1", "N", "normal", 0.9), row("a", "A", "benign", 0.3)]
    figures, table = patient_level(lesion_scores(rows), n_boot=20)
    assert [r["patient_id"] for r in table] == ["A"] and figures["n_patients"] == 1
    assert math.isnan(figures["benign_vs_malignant_auroc"]["mean"])
