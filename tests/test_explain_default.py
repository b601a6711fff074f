"""`sonocad explain` without a checkpoint: the bundled default model, predict's pictures (inferno
with a colour bar naming method, class and probability), honest counts and provenance."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from sonocad.cli import main
from sonocad.data.phantom import make_phantom
from sonocad.explain import runner
from sonocad.explain.runner import Explanation
from sonocad.pictures import heatmap_picture
from sonocad.provenance import file_sha256


def test_explain_without_a_checkpoint_explains_the_bundled_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "in" / "scan.png"
    image.parent.mkdir()
    PILImage.fromarray(make_phantom("malignant", size=(96, 128), seed=0).image).save(image)
    out = tmp_path / "out"
    drawn: list[tuple[str, np.ndarray]] = []

    def recorded(pixels: np.ndarray, heat: np.ndarray, label: str) -> np.ndarray:
        drawn.append((label, heatmap_picture(pixels, heat, label)))
        return drawn[-1][1]

    monkeypatch.setattr(runner, "heatmap_picture", recorded)
    assert main(["explain", str(image), "--out", str(out)]) == 0
    # Two pictures of one image: the lesion probability and the class call's Grad-CAM, both
    # predict's picture with a colour bar naming what it shows.
    assert capsys.readouterr().out.strip() == f"wrote 2 pictures of 1 images to {out}"
    (lesion_label, lesion), (class_label, cam) = drawn
    assert lesion_label == "lesion probability"
    assert re.fullmatch(r"Grad-CAM of (normal|benign|malignant) \(\d\.\d\d\)", class_label)
    np.testing.assert_array_equal(np.asarray(PILImage.open(out / "scan_heatmap.png")), lesion)
    np.testing.assert_array_equal(np.asarray(PILImage.open(out / "scan_class_heatmap.png")), cam)
    provenance = json.loads((out / "provenance.json").read_text())
    (model,) = provenance["models"]
    assert model["bundled"] and Path(model["file"]).name == "default.pt"
    assert model["sha256"] == file_sha256(model["file"]) and provenance["backend"] == "torch"


def test_a_checkpoint_without_images_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "model.pt", "--out", str(tmp_path / "out")]) == 2
    assert "a checkpoint was given but no images to explain" in capsys.readouterr().err


@pytest.mark.parametrize(("explanation", "label"), [
    (Explanation(np.zeros((2, 2)), "gradcam", "malignant", 0.914), "Grad-CAM of malignant (0.91)"),
    (Explanation(np.zeros((2, 2)), "gradcam++", "benign", 0.5), "Grad-CAM++ of benign (0.50)"),
    (Explanation(np.zeros((2, 2)), "lesion_probability"), "lesion probability"),
    (Explanation(np.zeros((2, 2)), "instance_score", "malignant", 0.9), "instance score"),
])
def test_the_colour_bar_names_what_the_heatmap_shows(explanation: Explanation,
                                                     label: str) -> None:
    assert explanation.label == label
