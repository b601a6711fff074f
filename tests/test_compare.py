"""`sonocad compare` on hand-made predictions tables: the joined tables, P values and errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import multitask_rows
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


def write_eval(folder: Path, rows: list[dict[str, Any]], model: str) -> Path:
    write_predictions(folder / "predictions", rows)
    write_json(folder / "metrics.json", {"task": "multitask", "model": model})
    return folder


@pytest.fixture
def evals(tmp_path: Path) -> tuple[Path, Path]:
    return (write_eval(tmp_path / "a", multitask_rows(1, 0.8), "model_a"),
            write_eval(tmp_path / "b", multitask_rows(2, 0.6), "model_b"))


def table_line(text: str, first: str) -> list[str]:
    """The cells of the printed row whose first cell is `first`."""
    [line] = [line for line in text.splitlines() if line.split()[:1] == [first]]
    return line.split()


def headings(text: str) -> list[list[str]]:
    """The model columns' headings of each printed table (up to "B - A")."""
    return [line.split()[1:line.split().index("B")] for line in text.splitlines()
            if line.split()[:1] == ["metric"]]


def read_back(folder: Path) -> list[dict[str, Any]]:
    from sonocad.predictions import read_predictions

    return read_predictions(folder / "predictions.csv")


def test_both_tables_printed_with_the_statistics_p_values(evals, capsys, tmp_path) -> None:
    out = tmp_path / "comparison.json"
    assert main(["compare", str(evals[0]), str(evals[1] / "predictions.csv"),
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    a, b = read_back(evals[0]), read_back(evals[1])
    assert ("joined on image_id: 16 images matched; left out 0 of 16 rows of A, 0 of 16 rows "
            "of B") in text
    assert headings(text) == [["model_a", "model_b"]] * 2  # named columns, both sections

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
    a = write_eval(tmp_path / "a", multitask_rows(1, 0.8, multitask=False, patients=False), "a")
    b = write_eval(tmp_path / "b", multitask_rows(2, 0.6, multitask=False, patients=False), "b")
    comparison = compare_evaluations(a, b, n_boot=200)
    assert comparison.classification is None and comparison.participant_unit == "image"
    dice = comparison.segmentation.rows[0]
    assert dice.metric == "dice" and dice.test.n == 12  # every lesion image is a participant
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "Segmentation (JMIR 2026 Table 2)" in text and "QIMS" not in text


def test_rows_left_out_are_counted_and_no_shared_image_is_refused(tmp_path: Path,
                                                                   capsys) -> None:
    rows = multitask_rows(1, 0.8)
    a = write_eval(tmp_path / "a", rows, "a")
    b = write_eval(tmp_path / "b", rows[:-1], "b")
    comparison = compare_evaluations(a, b, n_boot=100)
    assert (comparison.n_joined, comparison.only_a, comparison.only_b) == (15, 1, 0)
    assert main(["compare", str(a), str(b)]) == 0
    assert ("joined on image_id: 15 images matched; left out 1 of 16 rows of A (e.g. "
            "'img15.png'), 0 of 15 rows of B") in capsys.readouterr().out

    renamed = [{**row, "image_id": "other_" + row["image_id"]} for row in rows]
    c = write_eval(tmp_path / "c", renamed, "c")
    with pytest.raises(SonocadError, match="share no images"):
        compare_evaluations(a, c)
    assert main(["compare", str(a), str(c)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_disagreeing_truth_is_refused(tmp_path: Path) -> None:
    rows = multitask_rows(1, 0.8)
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


def predict_like(rows: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """`rows` as `sonocad predict` on `folder` writes them: no truth, ids relative to the
    folder given (here its class subfolder), the path read in ``file``."""
    out = []
    for row in rows:
        sub = folder / row["label"]
        file = sub / row["image_id"]
        out.append({**{k: v for k, v in row.items()
                       if k not in ("label", "truth_lesion", "patient_id", "dice", "iou",
                                    "recall", "hd95_px", "hd95_mm")},
                    "image_id": row["image_id"], "file": str(file)})
    return out


def test_a_predict_table_joins_by_path_suffix_and_by_content(tmp_path: Path, capsys) -> None:
    truth = [{**row, "image_id": f"{row['label']}/{row['image_id']}"}
             for row in multitask_rows(1, 0.8)]
    evaluated = write_eval(tmp_path / "eval", truth, "multitask_unet")
    data = tmp_path / "data"
    for k, row in enumerate(multitask_rows(2, 0.6)):
        (data / row["label"]).mkdir(parents=True, exist_ok=True)
        (data / row["label"] / row["image_id"]).write_bytes(f"image {k}".encode())
    predicted_rows = predict_like(multitask_rows(2, 0.6), data)
    predicted = tmp_path / "pred"
    write_predictions(predicted / "predictions", predicted_rows)
    write_json(predicted / "provenance.json", {"models": [
        {"name": "multitask_unet", "file": "/x/sonocad_default.onnx"}]})

    # ids `img00.png` against `normal/img00.png`: the trailing path parts join them.
    assert main(["compare", str(predicted), str(evaluated)]) == 0
    text = capsys.readouterr().out
    assert ("joined on path suffix: 16 images matched; left out 0 of 16 rows of A, 0 of 16 "
            "rows of B") in text
    assert headings(text) == [["multitask_unet", "(sonocad_default.onnx)", "multitask_unet"]]
    # The predict table has no lesion metrics: said, not silent.
    assert text.count("segmentation not compared: only one table has it") == 1
    assert "Classification (QIMS 2023 Table 2)" in text

    # Two predict tables of copies of the same files under other names: content joins them.
    copies = tmp_path / "copies"
    copies.mkdir()
    renamed = []
    for k, row in enumerate(predicted_rows):
        copy = copies / f"copy{k}.bin"
        copy.write_bytes(Path(row["file"]).read_bytes())
        renamed.append({**row, "image_id": copy.name, "file": str(copy),
                        "label": truth[k]["label"]})
    other = tmp_path / "other"
    write_predictions(other / "predictions", renamed)
    comparison = compare_evaluations(other, predicted, n_boot=100)
    assert comparison.join_key == "file content (sha256)" and comparison.n_joined == 16
    assert comparison.a.name == "other" and comparison.b.name.startswith("multitask_unet")


def test_differences_are_b_minus_a_with_participant_bootstrap(evals) -> None:
    from sonocad.evaluation.bootstrap import bootstrap_ci

    comparison = compare_evaluations(*evals, n_boot=300)
    a, b = read_back(evals[0]), read_back(evals[1])
    lesion = [i for i, row in enumerate(a) if row["truth_lesion"] == 1]
    diff = np.array([b[i]["dice"] - a[i]["dice"] for i in lesion])
    [dice] = [row for row in comparison.segmentation.rows if row.metric == "dice"]
    assert dice.difference.estimate == pytest.approx(diff.mean())
    assert (dice.difference.ci_low, dice.difference.ci_high) == pytest.approx(bootstrap_ci(
        diff, n_boot=300, groups=[a[i]["patient_id"] for i in lesion]))
    cls = comparison.classification
    assert cls.differences["accuracy"].estimate == pytest.approx(
        cls.rates_b["accuracy"].estimate - cls.rates_a["accuracy"].estimate)
    assert cls.differences["AUROC"].estimate == pytest.approx(
        cls.auroc_b.auroc - cls.auroc_a.auroc)
    low, high = cls.differences["AUROC"].ci_low, cls.differences["AUROC"].ci_high
    assert low <= cls.differences["AUROC"].estimate <= high


def test_predict_on_busi_class_folders_joins_evaluate_of_the_same_images(
        busi_root: Path, tmp_path: Path, capsys) -> None:
    """The acceptance case of issue 30 on 6 real BUSI images: predict run on the class folders
    (ids `benign (1).png`), evaluate on the data root (ids `benign/benign (1).png`)."""
    import shutil

    from sonocad.data.split import SplitFile, write_split

    data = tmp_path / "Dataset_BUSI_with_GT"
    ids = []
    for label in ("benign", "malignant"):
        (data / label).mkdir(parents=True)
        for k in (1, 2, 3):
            for name in (f"{label} ({k}).png", f"{label} ({k})_mask.png"):
                shutil.copy(busi_root / label / name, data / label / name)
            ids.append(f"{label}/{label} ({k}).png")
    split = tmp_path / "split.json"
    write_split(split, SplitFile("Dataset_BUSI_with_GT", 0, "hand", {"test": tuple(ids)}))
    assert main(["evaluate", "default", "--data", str(data), "--split", f"{split}:test",
                 "--out", str(tmp_path / "eval"), "--overlays", "0", "--batch-size", "6"]) == 0
    assert main(["predict", str(data / "benign"), str(data / "malignant"),
                 "--out", str(tmp_path / "pred"), "--outputs", "table"]) == 0
    capsys.readouterr()

    assert main(["compare", str(tmp_path / "pred"), str(tmp_path / "eval")]) == 0
    text = capsys.readouterr().out
    # Both tables name each image's file: the strongest key after the ids.
    assert ("joined on file path: 6 images matched; left out 0 of 6 rows of A, 0 of 6 rows "
            "of B") in text
    assert "Classification (QIMS 2023 Table 2): malignant = positive; 3 malignant, 3 benign" \
        in text
    assert "segmentation not compared: only one table has it" in text
