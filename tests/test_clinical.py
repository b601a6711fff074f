"""QIMS 2023 clinical side: the MLP, missing values, synthetic tables, combined models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from torch import nn

from conftest import detector_table
from sonocad.cli import main
from sonocad.data.clinical_synth import (
    SOURCE_COLUMN,
    SYNTHETIC,
    synthesize_clinical,
    write_synthetic_clinical,
)
from sonocad.errors import SonocadError
from sonocad.evaluation.combined import LOGISTIC, TREE, fit_combined, format_qims_table, qims_table
from sonocad.models.clinical import (
    ClinicalFeatures,
    ClinicalMLP,
    fit_clinical_model,
    parse_clinical,
)


def _cells(age="50", family="no", brca="", density="c") -> dict[str, str]:
    return {"age": age, "family_history": family, "brca_mutation": brca,
            "breast_density": density}


def _record(**kwargs):
    return parse_clinical(_cells(**kwargs), "test")


# --- the network ----------------------------------------------------------------------------

def test_the_mlp_has_30_60_120_60_30_hidden_units_with_batch_norm_and_relu_then_two_outputs():
    layers = list(ClinicalMLP(11).layers)
    linear = [m for m in layers if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [
        (11, 30), (30, 60), (60, 120), (120, 60), (60, 30), (30, 2)]
    kinds = [type(m) for m in layers]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU] * 5 + [nn.Linear]
    assert [m.num_features for m in layers if isinstance(m, nn.BatchNorm1d)] == [
        30, 60, 120, 60, 30]


# --- parsing and missing values -------------------------------------------------------------

def test_cells_parse_to_numbers_and_missing_values_to_nan():
    record = _record(age="47", family="Yes", brca="negative", density="3")
    assert record == {"age": 47.0, "family_history": 1.0, "brca_mutation": 0.0,
                      "breast_density": "c"}
    missing = _record(age="", family="unknown", brca="NA", density="")
    assert np.isnan(missing["age"]) and np.isnan(missing["family_history"])
    assert np.isnan(missing["brca_mutation"]) and missing["breast_density"] == "missing"


def test_common_spellings_of_the_columns_are_accepted():
    cells = {"Age": "47", "Family history": "yes", "BRCA": "no", "density": "b",
             "image_id": "x.png"}
    assert parse_clinical(cells, "t.csv: x") == {"age": 47.0, "family_history": 1.0,
                                                 "brca_mutation": 0.0, "breast_density": "b"}
    spelled = {"AGE": "60", "family-history": "0", "brca_mutation": "1",
               "Breast Density": "D"}
    assert parse_clinical(spelled, "t.csv: y")["breast_density"] == "d"
    with pytest.raises(SonocadError, match="'density' and 'breast_density' both give"):
        parse_clinical({**cells, "breast_density": "c"}, "t.csv: x")


@pytest.mark.parametrize("cells, problem", [
    (_cells(age="old"), "age"), (_cells(density="e"), "breast_density"),
    (_cells(brca="maybe"), "brca_mutation"), ({"age": "50"}, "no clinical column")])
def test_bad_cells_are_one_line_errors_naming_the_field(cells, problem):
    with pytest.raises(SonocadError, match=problem):
        parse_clinical(cells, "table.csv: image 7")


def test_imputation_and_indicators_are_fitted_on_training_rows_only():
    training = [_record(age="40", family="yes"), _record(age="50", family="yes"),
                _record(age="60", family="no")]
    features = ClinicalFeatures().fit(training)
    test = [_record(age="", family="", brca="", density=""),
            _record(age="90", family="no", brca="yes", density="a")]
    x = features.transform(test)
    # age (standardised), family history, BRCA, 3 missing indicators, density a b c d missing
    assert x.shape == (2, 11)
    np.testing.assert_allclose(x[0], [0, 1, 0, 1, 1, 1, 0, 0, 0, 0, 1], atol=1e-6)
    # 90 years, standardised with the training mean 50 and std 8.165: the test rows do not
    # move the statistics.
    np.testing.assert_allclose(x[1], [40 / np.std([40, 50, 60]), 0, 1, 0, 0, 0, 1, 0, 0, 0, 0],
                               atol=1e-5)


def test_fitting_is_seeded_and_learns_a_clinical_signal():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    records = [_record(age=str(int(40 + 20 * y + rng.integers(-8, 9))),
                       family="yes" if rng.random() < 0.1 + 0.3 * y else "no")
               for y in labels]
    first = fit_clinical_model(records, labels, epochs=30, seed=3)
    again = fit_clinical_model(records, labels, epochs=30, seed=3)
    scores = first.predict_proba(records)
    np.testing.assert_array_equal(scores, again.predict_proba(records))
    assert roc_auc_score(labels, scores) > 0.9
    with pytest.raises(SonocadError, match="benign and malignant"):
        fit_clinical_model(records[:5], [0] * 5)


# --- synthetic tables -----------------------------------------------------------------------

def test_synthetic_rows_are_labelled_reproducible_and_follow_the_class_profiles():
    labels = ["benign"] * 400 + ["malignant"] * 400
    ids = [f"img{i}.png" for i in range(800)]
    rows = synthesize_clinical(ids, labels, seed=1)
    assert rows == synthesize_clinical(ids, labels, seed=1)
    assert all(row[SOURCE_COLUMN] == SYNTHETIC for row in rows)
    ages = {name: [float(r["age"]) for r, y in zip(rows, labels) if y == name and r["age"]]
            for name in ("benign", "malignant")}
    assert np.mean(ages["malignant"]) - np.mean(ages["benign"]) > 5
    assert 0.6 < np.mean([r["brca_mutation"] == "" for r in rows]) < 0.8
    for row in rows:
        parse_clinical(row, "synthetic")  # every row reads back
    with pytest.raises(SonocadError, match="profile"):
        synthesize_clinical(["a.png"], ["normal"])


def test_a_synthetic_table_must_say_so_in_its_file_name(tmp_path):
    with pytest.raises(SonocadError, match=SYNTHETIC):
        write_synthetic_clinical(tmp_path / "clinical.csv", ["a.png"], ["benign"])
    path = write_synthetic_clinical(tmp_path / f"clinical_{SYNTHETIC}.csv", ["a.png"],
                                    ["benign"])
    with open(path) as handle:
        assert next(csv.DictReader(handle))[SOURCE_COLUMN] == SYNTHETIC


# --- combined models ------------------------------------------------------------------------

def test_table_2_rates_and_exact_intervals_by_hand():
    truth = [1, 1, 1, 1, 0, 0, 0, 0]
    rows = qims_table(truth, {"image": [1, 1, 0, 0, 0, 0, 0, 1],
                              "combined": [1, 1, 1, 1, 0, 0, 0, 1]})
    image, combined = rows
    assert (image["sensitivity"].successes, image["sensitivity"].total) == (2, 4)
    assert image["specificity"].estimate == 0.75 and image["accuracy"].estimate == 5 / 8
    assert combined["sensitivity"].estimate == 1.0
    # Clopper-Pearson for 4/4: lower bound (0.025)^(1/4).
    assert combined["sensitivity"].ci_low == pytest.approx(0.025 ** 0.25, abs=1e-9)
    assert image["mcnemar"] is None and combined["mcnemar"].p_value == pytest.approx(0.5)
    text = format_qims_table(rows, "title")
    assert "50.0% (2/4;" in text and "100.0% (4/4;" in text


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.3 * y + rng.normal(0.35, 0.2, n), 0, 1), \
        np.clip(0.4 * y + rng.normal(0.3, 0.15, n), 0, 1)


@pytest.mark.parametrize("kind", [LOGISTIC, TREE])
def test_combined_models_only_overturn_lesions_the_image_model_called_benign(kind):
    y, image, clinical = _scores(300, 0)
    model = fit_combined(kind, image, clinical, y, threshold=0.5, folds=5, seed=0)
    assert "called benign" in model.fitted_on
    predicted = model.predict(image, clinical)
    assert predicted[image >= 0.5].all()  # the image model's malignant calls stand
    rescued = predicted & (image < 0.5)
    assert rescued.any() and y[rescued].mean() > y[image < 0.5].mean()


def test_combined_models_refuse_too_few_lesions():
    with pytest.raises(SonocadError, match="at least 10"):
        fit_combined(LOGISTIC, [0.1, 0.9, 0.2], [0.5, 0.5, 0.5], [0, 1, 0], threshold=0.5)


def test_sonocad_combine_prints_table_2_and_labels_synthetic_inputs(tmp_path, capsys):
    y, image, _ = _scores(100, 1)
    ids = [f"{('benign', 'malignant')[label]}/{i}.png" for i, label in enumerate(y)]
    names = [("benign", "malignant")[label] for label in y]
    fit = detector_table(tmp_path / "fit", ids[:60], names[:60], image[:60])
    test = detector_table(tmp_path / "test", ids[60:], names[60:], image[60:])
    clinical = write_synthetic_clinical(tmp_path / f"clinical_{SYNTHETIC}.csv", ids,
                                        [("benign", "malignant")[label] for label in y])
    out = tmp_path / "combined"
    assert main(["combine", "--fit", str(fit), "--test", str(test), "--clinical",
                 str(clinical), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "40 test lesions" in printed and SYNTHETIC in printed
    assert "AUROC (DeLong 95 % CI): image score" in printed
    for name in ("image_model", "logistic_regression", "decision_tree"):
        assert name in printed
        with open(out / name / "predictions.csv") as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 40 and all(r[SOURCE_COLUMN] == SYNTHETIC for r in rows)
        assert {"label", "predicted_class", "correct", "malignant_score", "clinical_score"} <= set(
            rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[SOURCE_COLUMN] == SYNTHETIC and metrics["n_fit"] == 60
    assert [row["model"] for row in metrics["table"]] == [
        "image_model", "logistic_regression", "decision_tree"]
    assert (out / "table2.txt").read_text().startswith("QIMS 2023 Table 2 layout")
    # Each model's table reads as a benign / malignant classifier in `sonocad compare`.
    assert main(["compare", str(out / "image_model"), str(out / "logistic_regression")]) == 0
    assert "McNemar" in capsys.readouterr().out


def test_combine_names_images_without_clinical_rows(tmp_path):
    y, image, _ = _scores(20, 2)
    ids = [f"{i}.png" for i in range(20)]
    table = detector_table(tmp_path / "fit", ids, [("benign", "malignant")[k] for k in y],
                           image)
    clinical = write_synthetic_clinical(tmp_path / f"c_{SYNTHETIC}.csv", ids[:10],
                                        ["benign"] * 10)
    assert main(["combine", "--fit", str(table), "--test", str(table), "--clinical",
                 str(clinical), "--out", str(tmp_path / "out")]) == 2
