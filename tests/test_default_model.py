"""The bundled default model: present, small, documented, and it works with no checkpoint."""

from __future__ import annotations

import csv
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from sonocad import checkpoint as checkpoint_module
from sonocad.checkpoint import bundled_checkpoint
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import make_phantom
from sonocad.data.split import read_split, select
from sonocad.errors import SonocadError
from sonocad.evaluation.segmentation import confusion, overlap_metrics
from sonocad.inference import predictor as predictor_module
from sonocad.inference.predictor import Predictor

WEIGHTS = files("sonocad").joinpath("weights")
SPLIT = Path(__file__).resolve().parents[1] / "benchmarks" / "splits" / "busi.json"


def test_the_bundled_weights_are_small_and_carry_a_model_card():
    weights = WEIGHTS.joinpath("default.pt")
    assert weights.is_file(), "src/sonocad/weights/default.pt is missing"
    assert Path(str(weights)).stat().st_size <= 20 * 1000 * 1000  # issue 25: <= 20 MB
    card = WEIGHTS.joinpath("MODEL_CARD.md").read_text(encoding="utf-8")
    assert "BUSI" in card and "doi:10.1016/j.dib.2019.104863" in card
    info = Predictor.default().info
    assert info.task == "multitask" and info.class_names == ("normal", "benign", "malignant")
    stored = bundled_checkpoint().meta
    assert "test_metrics" in stored and "path" not in stored["data"]


def test_predict_without_a_checkpoint_writes_every_output(tmp_path):
    image = tmp_path / "scan.png"
    PILImage.fromarray(make_phantom("malignant", size=(120, 160), seed=2).image).save(image)
    out = tmp_path / "out"
    assert main(["predict", str(image), "--out", str(out)]) == 0
    for folder in ("masks", "overlays", "heatmaps"):
        assert (out / folder / "scan.png").is_file(), folder
    with open(out / "predictions.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    probabilities = [float(row[f"prob_{c}"]) for c in ("normal", "benign", "malignant")]
    assert sum(probabilities) == pytest.approx(1, abs=1e-4)
    assert row["predicted_class"] in ("normal", "benign", "malignant")
    mask = np.array(PILImage.open(out / "masks" / "scan.png")) > 0
    assert int(float(row["lesion_area_px"])) == mask.sum() and (out / "predictions.json").is_file()


def test_a_missing_bundle_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(checkpoint_module, "BUNDLED_MODEL", ("weights", "absent.pt"))
    with pytest.raises(SonocadError, match="no bundled default model"):
        Predictor.default(backend="torch")
    assert Predictor.default().backend == "onnx"  # its ONNX twin needs no checkpoint
    monkeypatch.setattr(predictor_module, "BUNDLED_ONNX", ("weights", "absent.onnx"))
    with pytest.raises(SonocadError, match="no bundled default model"):
        Predictor.default()


@pytest.mark.busi
def test_the_bundled_model_segments_and_classifies_real_test_images(busi_root):
    """A guard against a broken bundle: 30 frozen-test images, far above chance."""
    samples = select(open_dataset(busi_root), read_split(SPLIT).subsets["test"])[::4][:30]
    predictor = Predictor.default()
    ious, correct = [], []
    for sample in samples:
        pixels = sample.load_image().pixels
        (prediction,) = predictor.predict([pixels])
        correct.append(prediction.predicted_class == sample.label)
        truth = sample.load_mask(pixels.shape[:2])
        if truth is not None and truth.any():
            ious.append(overlap_metrics(confusion(truth, prediction.mask))["iou"])
    assert len(ious) >= 15
    assert np.mean(ious) > 0.55 and np.mean(correct) > 0.7
