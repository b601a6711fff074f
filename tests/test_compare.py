"""`sonocad compare` on hand-made predictions tables: the joined tables, P values and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sonocad.cli import main
from sonocad.errors import SonocadError
from sonocad.evaluation.compare import compare_evaluations, format_p
from sonocad.evaluation.statistics import (
    delong_auroc,
    delong_test,
    mcnemar_exact,
    paired_comparison,
)
from sonocad.io.atomic import write_json
from sonocad.predictions import write_predictions

CLASSES = ("normal", "benign", "malignant")
# 8 patients, 2 images each: p1-p2 normal (no lesion), p3-p5 benign, p6-p8 malignant.
PATIENTS = [f"p{k}" for k in range(1, 9) for _ in range(2)]
LABELS = ["normal"] * 4 + ["benign"] * 6 + ["malignant"] * 6


def model_rows(seed: int, quality: float, *, multitask: bool = True,
               patients: bool = True) -> list[dict[str, Any]]:
    """A multitask predictions table as `sonocad evaluate` writes it; better with `quality`."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, (patient, label) in enumerate(zip(PATIENTS, LABELS, strict=True)):
        lesion = label != "normal"
        dice = float(np.clip(quality + rng.normal(0, 0.1), 0, 1)) if lesion else 1.0
        row = {"image_id": f"img{k:02d}.png", "patient_id": patient if patients else None,
               "label": label, "truth_lesion": int(lesion), "dice": dice,
               "iou": dice / (2 - dice), "recall": dice if lesion else None,
               "hd95_px": float(rng.uniform(2, 20)) if lesion else None, "hd95_mm": None}
        if multitask:
            logits = rng.normal(0, 1, 3) + 3 * quality * (np.array(CLASSES) == label)
            probs = np.exp(logits) / np.exp(logits).sum()
            row |= {"predicted_class": CLASSES[int(probs.argmax())],
                    **{f"prob_{c}": float(p) for c, p in zip(CLASSES, probs, strict=True)}}
        rows.append(row)
    return rows


def write_eval(folder: Path, rows: list[dict[str, Any]], model: str) -> Path:
    write_predictions(folder / "predictions", rows)
    write_json(folder / "metrics.json", {"task": "multitask", "model": model})
    return folder


@pytest.fixture
def evals(tmp_path: Path) -> tuple[Path, Path]:
    return (write_eval(tmp_path / "a", model_rows(1, 0.8), "model_a"),
            write_eval(tmp_path / "b", model_rows(2, 0.6), "model_b"))


def table_line(text: str, first: str) -> list[str]:
    """The cells of the printed row whose first cell is `first`."""
    [line] = [line for line in text.splitlines() if line.split()[:1] == [first]]
    return line.split()


def read_back(folder: Path) -> list[dict[str, Any]]:
    from sonocad.predictions import read_predictions

    return read_predictions(folder / "predictions.csv")


def test_both_tables_printed_with_the_statistics_p_values(evals, capsys, tmp_path) -> None:
    out = tmp_path / "comparison.json"
    assert main(["compare", str(evals[0]), str(evals[1] / "predictions.csv"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    a, b = read_back(evals[0]), read_back(evals[1])
    assert "joined 16 images" in text and "(model_a)" in text and "(model_b)" in text

    # JMIR layout: lesion images only, patients as participants (p3-p8: 6 of them).
    assert "lesion images only (truth_lesion = 1), 12 images from 6 participants" in text
    lesion = [i for i, row in enumerate(a) if row["truth_lesion"] == 1]
    for metric in ("dice", "iou", "recall", "hd95_px"):
        expected = paired_comparison([a[i][metric] for i in lesion], [b[i][metric] for i in lesion],
                                     [a[i]["patient_id"] for i in lesion])
        cells = table_line(text, metric)
        assert cells[1] == f"{np.mean([a[i][metric] for i in lesion]):.3f}"
        assert cells[-3:] == [format_p(expected.p_value),
                              {"paired t": "t"}.get(expected.test, "Wilcoxon"), "6"]
    assert not any(line.startswith("hd95_mm") for line in text.splitlines())  # no values

    # QIMS layout: benign and malignant images only, malignant positive.
    kept = [i for i, row in enumerate(a) if row["label"] in ("benign", "malignant")]
    truth = np.array([a[i]["label"] == "malignant" for i in kept])
    pred_a = np.array([a[i]["predicted_class"] == "malignant" for i in kept])
    pred_b = np.array([b[i]["predicted_class"] == "malignant" for i in kept])
    expected_p = {
        "sensitivity": mcnemar_exact(pred_a[truth], pred_b[truth]).p_value,
        "specificity": mcnemar_exact(~pred_a[~truth], ~pred_b[~truth]).p_value,
        "accuracy": mcnemar_exact(pred_a == truth, pred_b == truth).p_value,
    }
    for name, p in expected_p.items():
        assert table_line(text, name)[-2:] == [format_p(p), "McNemar"]
    sensitivity_a = f"{int((pred_a & truth).sum())}/{int(truth.sum())}"
    assert sensitivity_a in table_line(text, "sensitivity")
    score_a = [a[i]["prob_malignant"] / (a[i]["prob_malignant"] + a[i]["prob_benign"])
               for i in kept]
    score_b = [b[i]["prob_malignant"] / (b[i]["prob_malignant"] + b[i]["prob_benign"])
               for i in kept]
    auroc_cells = table_line(text, "AUROC")
    assert auroc_cells[1] == f"{delong_auroc(truth, score_a).auroc:.3f}"
    assert auroc_cells[-2:] == [format_p(delong_test(truth, score_a, score_b).p_value),
                                "DeLong"]
    assert "benign and malignant images only" in text

    saved = json.loads(out.read_text())
    assert saved["n_joined"] == 16 and saved["participant_unit"] == "patient"
    assert saved["classification"]["delong"]["p_value"] == pytest.approx(
        delong_test(truth, score_a, score_b).p_value)


def test_segmentation_tables_without_patient_ids(tmp_path: Path, capsys) -> None:
    a = write_eval(tmp_path / "a", model_rows(1, 0.8, multitask=False, patients=False), "a")
    b = write_eval(tmp_path / "b", model_rows(2, 0.6, multitask=False, patients=False), "b")
    comparison = compare_evaluations(a, b, n_boot=200)
    assert comparison.classification is None and comparison.participant_unit == "image"
    dice = comparison.segmentation.rows[0]
    assert dice.metric == "dice" and dice.test.n == 12  # every lesion image is a participant
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "Segmentation (JMIR 2026 Table 2)" in text and "QIMS" not in text


def test_different_images_are_refused(tmp_path: Path, capsys) -> None:
    rows = model_rows(1, 0.8)
    a = write_eval(tmp_path / "a", rows, "a")
    b = write_eval(tmp_path / "b", rows[:-1], "b")
    with pytest.raises(SonocadError, match="1 only in A, 0 only in B, e.g. 'img15.png'"):
        compare_evaluations(a, b)
    assert main(["compare", str(a), str(b)]) == 2
    error = capsys.readouterr().err
    assert "cover different images (1 only in A, 0 only in B" in error
    assert error.count("\n") == 1

    renamed = [{**row, "image_id": "other_" + row["image_id"]} for row in rows]
    c = write_eval(tmp_path / "c", renamed, "c")
    with pytest.raises(SonocadError, match="share no image ids"):
        compare_evaluations(a, c)


def test_disagreeing_truth_is_refused(tmp_path: Path) -> None:
    rows = model_rows(1, 0.8)
    relabelled = [{**row, "label": "benign"} if k == 0 else row for k, row in enumerate(rows)]
    a, b = write_eval(tmp_path / "a", rows, "a"), write_eval(tmp_path / "b", relabelled, "b")
    with pytest.raises(SonocadError, match="disagree on label for 1 image"):
        compare_evaluations(a, b)


def test_missing_and_unreadable_inputs_name_the_file(tmp_path: Path, evals, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["compare", str(evals[0]), str(empty)]) == 2
    assert capsys.readouterr().err == (f"sonocad: error: {empty}: no predictions.csv here "
                                       "(expected a `sonocad evaluate` folder)\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,x\n1,2\n")
    assert main(["compare", str(bad), str(evals[1])]) == 2
    assert capsys.readouterr().err.startswith(f"sonocad: error: {bad}: not a predictions table")


def test_patient_ids_01_and_1_stay_two_patients(tmp_path) -> None:
    from sonocad.predictions import read_predictions, write_predictions

    write_predictions(tmp_path / "predictions", [
        {"image_id": "a.png", "patient_id": "01", "dice": 0.5},
        {"image_id": "b.png", "patient_id": "1", "dice": 0.7}])
    rows = read_predictions(tmp_path / "predictions.csv")
    assert [row["patient_id"] for row in rows] == ["01", "1"]
    assert [row["dice"] for row in rows] == [0.5, 0.7]
