"""A trained Mask R-CNN used end to end: predict, serve, explain; export refused in one line;
instances drawn and tabled; AP with bootstrap CIs and precision-recall curves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage

from conftest import phantom_dataset
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import make_phantom, write_phantom_dataset
from sonocad.data.split import make_split, write_split
from sonocad.evaluation.detection import (
    ImageInstances,
    ScoredImage,
    bootstrap_ap,
    detection_ap,
    precision_recall,
    score_image,
)
from sonocad.inference.detection import DetectionPredictor
from sonocad.inference.predictor import Predictor
from sonocad.pictures import _INSTANCE_COLOURS
from sonocad.predictions import read_predictions
from sonocad.serve import create_app
from sonocad.tasks.detection_outputs import detection_outputs

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "qims2023_maskrcnn.yaml"
TINY = ["transform.input_size=128", "batch_size=2", "eval_batch_size=2", "data.cache=false"]
CLASSES = ["background", "benign", "malignant"]


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Path:
    """A Mask R-CNN trained for two steps on phantoms, from the shipped recipe."""
    root = tmp_path_factory.mktemp("detector")
    data, split = phantom_dataset(root, 4, (64, 64), seed=2)
    run = root / "run"
    assert main(["train", str(RECIPE), "--data", str(data), "--split", str(split), "--out",
                 str(run), *TINY, "max_steps=2"]) == 0
    return run / "best.pt"


@pytest.fixture
def scan(tmp_path) -> Path:
    path = tmp_path / "in" / "scan.png"
    path.parent.mkdir()
    PILImage.fromarray(make_phantom("malignant", size=(120, 160), seed=1).image).save(path)
    return path


def _found(shape=(120, 160)) -> ImageInstances:
    """Two instances above the 0.5 cut-off (malignant 0.9, benign 0.6) and one below it."""
    masks = np.zeros((3, *shape), dtype=bool)
    masks[0, 20:50, 30:70] = True
    masks[1, 70:100, 90:140] = True
    masks[2, 104:114, 4:14] = True
    boxes = np.array([[30, 20, 70, 50], [90, 70, 140, 100], [4, 104, 14, 114]],
                     dtype=np.float32)
    return ImageInstances(boxes, np.array([2, 1, 2]), masks,
                          np.array([0.9, 0.6, 0.3], dtype=np.float32))


def _fake_detector(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trained weights find nothing yet: the drawing and the tables get known instances."""
    monkeypatch.setattr(DetectionPredictor, "predict",
                        lambda self, images: [_found(image.shape[:2]) for image in images])


# --- the real checkpoint, every command -----------------------------------------------------

def test_a_trained_detector_predicts_explains_and_serves(detector, scan, tmp_path, capsys):
    out = tmp_path / "predicted"
    assert main(["predict", str(detector), str(scan), "--out", str(out)]) == 0
    (row,) = read_predictions(out / "predictions.csv")
    assert {"predicted_class", "malignant_score", "benign_score", "n_instances",
            "instances", "lesion_detected", "lesion_area_px"} <= set(row)
    assert row["n_instances"] == len(json.loads(row["instances"]))
    for folder in ("masks", "overlays", "heatmaps"):
        assert (out / folder / "scan.png").is_file(), folder

    explained = tmp_path / "explained"
    assert main(["explain", str(detector), str(scan), "--out", str(explained)]) == 0
    assert (explained / "scan_heatmap.png").is_file()
    assert (explained / "scan_detections.png").is_file()

    with TestClient(create_app(Predictor(detector)), base_url="http://localhost") as client:
        assert client.get("/api/model").json()["task"] == "detection"
        answer = client.post("/api/predict",
                             files={"file": ("scan.png", scan.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
        result = answer.json()
        assert result["n_instances"] == len(result["instances"])
        assert "malignant_score" in result and result["predicted_class"] is not None
        assert client.get(result["overlay_url"]).status_code == 200

    capsys.readouterr()
    assert main(["export", str(detector), "--out", str(tmp_path / "det.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "torch back end only" in err[0]
    assert not (tmp_path / "det.onnx").exists()


def test_found_instances_are_tabled_measured_and_drawn(detector, scan, tmp_path, monkeypatch):
    _fake_detector(monkeypatch)
    out = tmp_path / "predicted"
    assert main(["predict", str(detector), str(scan), "--out", str(out),
                 "--spacing", "0.1"]) == 0
    (row,) = read_predictions(out / "predictions.csv")
    assert row["predicted_class"] == "malignant" and row["n_instances"] == 2
    assert row["malignant_score"] == pytest.approx(0.9)
    assert row["benign_score"] == pytest.approx(0.6)
    instances = json.loads(row["instances"])
    assert [i["label"] for i in instances] == ["malignant", "benign"]
    assert instances[0]["box"] == [30, 20, 70, 50]
    assert instances[0]["area_px"] == 30 * 40
    assert instances[0]["area_mm2"] == pytest.approx(30 * 40 * 0.01)
    # The mask is the union of the found instances: the 0.3 one is left out.
    mask = np.array(PILImage.open(out / "masks" / "scan.png")) > 0
    assert mask.sum() == 30 * 40 + 30 * 50 and not mask[104:114, 4:14].any()
    lesions = json.loads(row["lesions"])  # each instance's region, the main one first
    assert row["lesion_count"] == 2 and sum(lesion["area_px"] for lesion in lesions) == mask.sum()
    assert row["lesion_area_px"] == lesions[0]["area_px"]
    overlay = np.array(PILImage.open(out / "overlays" / "scan.png"))
    box_colour = np.array(_INSTANCE_COLOURS["malignant"])
    # The malignant box's left edge shows below its label.
    assert (overlay[20:50, 30] == box_colour).all(axis=-1).sum() >= 5
    assert not (overlay[104, 4:14] == box_colour).all(axis=-1).any()  # the 0.3 one: no box


def test_the_lesion_map_is_the_best_instance_score_under_each_pixel():
    instances, lesion_map, top = detection_outputs(_found(), CLASSES)
    assert [i.label for i in instances] == ["malignant", "benign"]
    assert lesion_map[30, 50] == pytest.approx(0.9) and lesion_map[80, 100] == pytest.approx(0.6)
    assert lesion_map[108, 8] == pytest.approx(0.3) and lesion_map[0, 0] == 0
    assert top == {"benign": pytest.approx(0.6), "malignant": pytest.approx(0.9)}
    nothing = ImageInstances(np.zeros((0, 4)), np.zeros(0, int), np.zeros((0, 8, 8), bool),
                             np.zeros(0, np.float32))
    instances, lesion_map, top = detection_outputs(nothing, CLASSES)
    assert instances == [] and lesion_map.shape == (8, 8) and not lesion_map.any()
    assert top == {"benign": 0.0, "malignant": 0.0}


def test_serve_sends_a_detectors_instances(detector, scan, monkeypatch):
    _fake_detector(monkeypatch)
    with TestClient(create_app(Predictor(detector)), base_url="http://localhost") as client:
        result = client.post("/api/predict", data={"spacing": "0.1"},
                             files={"file": ("scan.png", scan.read_bytes(), "image/png")}).json()
    assert result["n_instances"] == 2 and result["predicted_class"] == "malignant"
    assert result["instances"][0]["label"] == "malignant"
    assert result["instances"][0]["area_mm2"] == pytest.approx(12.0)


# --- AP with CIs, precision-recall ----------------------------------------------------------

def _scored(n_images: int, seed: int) -> list[ScoredImage]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n_images):
        truth_box = rng.uniform(0, 50, 2)
        truth = ImageInstances(np.r_[truth_box, truth_box + 20][None], np.array([1]))
        shift = rng.normal(0, 4, 2)
        predicted = ImageInstances(np.r_[truth_box + shift, truth_box + shift + 20][None],
                                   np.array([1]), scores=rng.uniform(0.05, 1, 1))
        images.append(score_image(predicted, truth, iou=("box",)))
    return images


def test_bootstrap_cis_hold_the_estimate_and_collapse_when_every_image_is_alike():
    images = _scored(40, seed=0)
    estimate = detection_ap(images, {1: "benign"})
    ci = bootstrap_ap(images, {1: "benign"}, n_boot=300, seed=1)
    for name in ("ap50", "map"):
        low, high = ci[name]
        assert low <= estimate[name] <= high and low < high
    perfect = [score_image(ImageInstances(np.array([[0, 0, 10, 10]]), np.array([1]),
                                          scores=np.array([0.9])),
                           ImageInstances(np.array([[0, 0, 10, 10]]), np.array([1])),
                           iou=("box",))] * 5
    assert bootstrap_ap(perfect, {1: "benign"}, n_boot=50)["ap50"] == (1.0, 1.0)


def test_precision_recall_steps_down_the_scores_over_every_truth():
    hit = ImageInstances(np.array([[0, 0, 10, 10]]), np.array([1]), scores=np.array([0.9]))
    miss = ImageInstances(np.array([[50, 50, 60, 60]]), np.array([1]), scores=np.array([0.8]))
    truth = ImageInstances(np.array([[0, 0, 10, 10]]), np.array([1]))
    unfound = ImageInstances(np.array([[20, 20, 30, 30]]), np.array([1]))
    images = [score_image(hit, truth, iou=("box",)), score_image(miss, unfound, iou=("box",))]
    recall, precision = precision_recall(images, 1)
    assert recall.tolist() == [0.5, 0.5] and precision.tolist() == [1.0, 0.5]


def test_evaluate_writes_ap_cis_the_curve_and_example_detections(detector, tmp_path,
                                                                 monkeypatch):
    _fake_detector(monkeypatch)
    data = tmp_path / "data"
    write_phantom_dataset(data, per_class=4, size=(64, 64), seed=9)
    split = tmp_path / "split.json"
    write_split(split, make_split(open_dataset(data), [], fractions=(0.5, 0.25, 0.25), seed=0))
    out = tmp_path / "eval"
    assert main(["evaluate", str(detector), "--data", str(data), "--split", f"{split}:train",
                 "--out", str(out), "--overlays", "2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ap50 = metrics["groups"]["all"]["ap50"]
    assert {"mean", "ci_low", "ci_high"} <= set(ap50)
    assert (out / "precision_recall.png").is_file()
    assert len(list((out / "examples").glob("*.png"))) == 2
    report = tmp_path / "report.html"
    assert main(["report", str(detector.parent), "--eval", str(out), "--out", str(report)]) == 0
    page = report.read_text()
    assert "Box precision-recall per class" in page and "Example detections" in page
