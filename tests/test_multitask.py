"""The default model's architecture and the multitask path: train, predict, export, evaluate."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_MULTITASK_RECIPE, training_inputs
from sonocad.cli import main
from sonocad.data.phantom import make_phantom
from sonocad.errors import SonocadError
from sonocad.inference.predictor import Predictor
from sonocad.models import create_model, efficientnet_lite
from sonocad.models.efficientnet_lite import imagenet_state_dict


@pytest.mark.parametrize("shape", [(64, 64), (64, 96)])
def test_outputs_keep_the_input_size_and_give_class_logits(shape):
    model = create_model("efficientnet_lite0_unet", num_classes=3).eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *shape))
    assert outputs["out"].shape == (2, 1, *shape) and outputs["aux"] == []
    assert outputs["class_logits"].shape == (2, 3)


def test_training_adds_deep_supervision_maps_at_the_input_size():
    model = create_model("efficientnet_lite0_unet", num_classes=3).train()
    outputs = model(torch.randn(2, 3, 64, 96))
    assert [tuple(side.shape) for side in outputs["aux"]] == [(2, 1, 64, 96)] * 2


@pytest.mark.parametrize("variant, blocks", [("lite0", 16), ("lite1", 21)])
def test_imagenet_weights_load_into_the_encoder_and_are_checksummed(monkeypatch, variant, blocks):
    name = f"efficientnet_{variant}_unet"
    reference = imagenet_state_dict(variant)
    model = create_model(name, pretrained="imagenet")
    assert len(model._blocks) == blocks
    state = model.state_dict()
    assert len(reference) > 250
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value)
    monkeypatch.setitem(efficientnet_lite.WEIGHTS, variant,
                        replace(efficientnet_lite.WEIGHTS[variant], sha256="0" * 64))
    with pytest.raises(SonocadError, match="SHA-256"):
        create_model(name, pretrained="imagenet")


@pytest.mark.parametrize("name", ["efficientnet_lite0_unet", "efficientnet_lite1_unet"])
def test_no_convolution_runs_at_full_resolution(name):
    """The speed argument of the design: everything heavy runs at stride 2 or coarser."""
    model = create_model(name).eval()
    full = []
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(
                lambda m, args, out: full.append(m) if out.shape[-1] == 64 else None)
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert full == []


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("multitask")
    data, split, recipe = training_inputs(root, TINY_MULTITASK_RECIPE, 4, (64, 64), seed=5)
    run = root / "run"
    assert main(["train", str(recipe), "--data", str(data), "--split", str(split),
                 "--out", str(run)]) == 0
    return data, split, run


def test_a_multitask_checkpoint_predicts_a_lesion_map_and_class_probabilities(trained):
    _, _, run = trained
    image = make_phantom("malignant", size=(50, 70), seed=1).image
    for backend in ("torch", "onnx"):
        (prediction,) = Predictor(run / "best.pt", backend=backend).predict([image])
        assert prediction.lesion_probability.shape == (50, 70)
        assert set(prediction.class_probabilities) == {"normal", "benign", "malignant"}
        assert sum(prediction.class_probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_evaluate_scores_both_heads_in_one_pass(trained, tmp_path, monkeypatch):
    data, split, run = trained
    out = tmp_path / "eval"
    predicted = []  # images the model saw
    predict = Predictor.predict
    monkeypatch.setattr(Predictor, "predict",
                        lambda self, images: predicted.extend(images) or predict(self, images))
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--split",
                 f"{split}:test", "--out", str(out), "--overlays", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "multitask"
    assert metrics["parts"]["segmentation"]["task"] == "segmentation"
    assert metrics["parts"]["classification"]["task"] == "classification"
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {"iou", "prob_malignant", "predicted_class"} <= set(rows[0])
    assert len(predicted) == len(rows) + 1  # once per image, plus the one overlay
    assert (out / "classification" / "roc.png").is_file()
    assert list((out / "segmentation" / "overlays").glob("*.png"))
    assert np.isfinite(float(rows[0]["prob_benign"]))
