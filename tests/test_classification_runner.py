"""`sonocad evaluate` on a classifier: a tiny checkpoint, phantom images, every output checked."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import checkpoint_meta
from sonocad.checkpoint import Checkpoint, save_checkpoint
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.data.sample import Sample
from sonocad.data.split import SplitFile, write_split
from sonocad.errors import SonocadError
from sonocad.evaluation.classification import classification_metrics
from sonocad.evaluation.summary import format_summary
from sonocad.inference.predictor import Predictor
from sonocad.models import list_models, register_model
from sonocad.predictions import read_predictions
from sonocad.tasks.classification_evaluation import evaluate_classification
from sonocad.workflows.evaluate import evaluate

CLASSES = ["normal", "benign", "malignant"]
TINY = "tiny_test_classifier"
FIGURES = ("confusion_matrix.png", "roc.png", "reliability.png")


def tiny_classifier(num_classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(3 * 16, num_classes))


if TINY not in list_models():  # the module may be imported twice in one session
    register_model(TINY, task="classification")(tiny_classifier)


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = tiny_classifier()
    with torch.no_grad():  # large weights, so predictions spread over classes and confidences
        model[2].weight.mul_(40)
    meta = {**checkpoint_meta("classification", TINY, {"num_classes": 3}, CLASSES),
            "data": {"labels": None}}
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, Checkpoint(meta, model.state_dict()))
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(root, per_class=3, size=(64, 64))
    return root


@pytest.fixture(scope="module")
def samples(data_root: Path) -> list[Sample]:
    # Two images per patient, so the bootstrap has patients to resample.
    return [dataclasses.replace(s, patient_id=f"p{i // 2}")
            for i, s in enumerate(open_dataset(data_root))]


@pytest.fixture(scope="module")
def result(checkpoint_path: Path, samples: list[Sample], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("eval")
    return evaluate_classification(Predictor(checkpoint_path), samples, out, "split.json:test",
                                   n_boot=50, batch_size=4, checkpoint=checkpoint_path)


def test_predictions_table_matches_the_predictor(result, checkpoint_path: Path,
                                                 samples: list[Sample]) -> None:
    rows = read_predictions(result.out_dir / "predictions.csv")
    assert [r["image_id"] for r in rows] == [s.image_id for s in samples]
    assert list(rows[0]) == ["image_id", "patient_id", "source", "scanner", "label", "file",
                             *(f"prob_{c}" for c in CLASSES), "predicted_class", "correct"]
    assert [row["file"] for row in rows] == [str(s.image_path) for s in samples]
    direct = Predictor(checkpoint_path).predict([s.load_image().pixels for s in samples])
    for row, sample, prediction in zip(rows, samples, direct):
        assert (row["label"], row["patient_id"]) == (sample.label, sample.patient_id)
        assert row["predicted_class"] == prediction.predicted_class
        for name in CLASSES:  # the CSV keeps 6 significant digits
            assert row[f"prob_{name}"] == pytest.approx(
                prediction.class_probabilities[name], rel=1e-5, abs=1e-7)
        assert row["correct"] == int(row["predicted_class"] == row["label"])
    as_json = json.loads((result.out_dir / "predictions.json").read_text())
    assert [r["image_id"] for r in as_json] == [r["image_id"] for r in rows]
    assert len({r["predicted_class"] for r in rows}) > 1  # the model is not degenerate


def test_metrics_json(result, samples: list[Sample]) -> None:
    metrics = json.loads((result.out_dir / "metrics.json").read_text())
    # As written: NaN (a metric undefined here) is JSON's null.
    assert metrics == json.loads(json.dumps(result.metrics), parse_constant=lambda _: None)
    assert metrics["task"] == "classification" and metrics["n_images"] == len(samples) == 9
    assert "over patients" in metrics["reduction"]
    assert metrics["model"] == TINY and metrics["checkpoint"].endswith("best.pt")
    stats = metrics["groups"]["all"]
    correct = [r["correct"] for r in result.rows]
    assert stats["accuracy"]["mean"] == pytest.approx(np.mean(correct))
    assert np.sum(metrics["confusion_matrix"]["matrix"]) == 9
    assert np.trace(metrics["confusion_matrix"]["matrix"]) == sum(correct)
    assert metrics["support"] == {c: 3 for c in CLASSES}
    assert set(metrics["roc"]) == {*CLASSES, "benign_vs_malignant"}
    assert sum(metrics["calibration"]["counts"]) == 9
    # The CIs resample patients: the same numbers as the metrics module grouped by patient.
    y = [CLASSES.index(r["label"]) for r in result.rows]
    probs = [[r[f"prob_{c}"] for c in CLASSES] for r in result.rows]
    expected = classification_metrics(y, probs, CLASSES, n_boot=50,
                                      groups=[s.patient_id for s in samples])
    assert stats["macro_f1"] == expected["metrics"]["macro_f1"]


def test_figures_are_pngs(result) -> None:
    for name in FIGURES:
        with Image.open(result.out_dir / name) as image:
            assert image.format == "PNG"
            assert min(image.size) > 300
            # Not a blank canvas: a real plot has many distinct colours.
            assert len(image.convert("RGB").getcolors(maxcolors=100_000) or []) > 50
    assert not list(result.out_dir.glob(".*.tmp"))


def test_summary_prints_the_headline_metrics(result) -> None:
    text = format_summary(result.metrics)
    assert text.startswith(f"{TINY} on split.json:test: 9 images")
    for name in ("accuracy", "macro_f1", "macro_auroc", "benign_vs_malignant_auroc", "ece",
                 "recall_malignant"):
        assert f"    {name} " in text


def test_evaluate_dispatches_classifiers(checkpoint_path: Path, data_root: Path,
                                         tmp_path: Path) -> None:
    ids = [s.image_id for s in open_dataset(data_root)]
    split = tmp_path / "split.json"
    write_split(split, SplitFile("phantoms", 0, "all images", {"test": tuple(sorted(ids))}))
    evaluated = evaluate(checkpoint_path, data_root, f"{split}:test", tmp_path / "eval",
                         n_boot=20)
    assert evaluated.metrics["task"] == "classification"
    assert "over images" in evaluated.metrics["reduction"]  # BUSI folders have no patient ids
    for name in ("predictions.csv", "metrics.json", *FIGURES):
        assert (tmp_path / "eval" / name).is_file()


def test_unknown_or_missing_labels_are_errors(checkpoint_path: Path, samples: list[Sample],
                                              tmp_path: Path) -> None:
    predictor = Predictor(checkpoint_path)
    odd = [*samples, dataclasses.replace(samples[0], image_id="x.png", label="cyst")]
    with pytest.raises(SonocadError, match="cyst"):
        evaluate_classification(predictor, odd, tmp_path, "s.json:test")
    unlabelled = [*samples, dataclasses.replace(samples[0], image_id="y.png", label=None)]
    with pytest.raises(SonocadError, match="1 image.* no label"):
        evaluate_classification(predictor, unlabelled, tmp_path, "s.json:test")
    with pytest.raises(SonocadError, match="no images"):
        evaluate_classification(predictor, [], tmp_path, "s.json:test")
    assert not list(tmp_path.iterdir())  # nothing written before the check
