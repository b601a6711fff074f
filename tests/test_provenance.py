"""provenance.json beside every predict, evaluate and explain output: the model's name and the
SHA-256 of its file, the back end, the sonocad version and the command line; the folder's
marker holds the same."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from conftest import png, unet_checkpoint
from sonocad import __version__
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.data.split import make_split, write_split
from sonocad.io.outputs import MARKER, output_of
from sonocad.predictions import read_predictions
from sonocad.provenance import PROVENANCE
from sonocad.workflows.evaluate import evaluate
from sonocad.workflows.predict import predict


def _provenance(out: Path) -> dict:
    return json.loads((out / PROVENANCE).read_text())


def _marker(out: Path) -> dict:
    return json.loads((out / MARKER).read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_predict_records_the_model_file_back_end_version_and_command_line(
        tmp_path: Path) -> None:
    checkpoint = unet_checkpoint(tmp_path / "seg.pt", 5.0)
    out = tmp_path / "out"
    result = predict([png(tmp_path / "in" / "a.png")], out, checkpoint=checkpoint)

    provenance = _provenance(out)
    assert provenance["models"] == [{
        "name": "unet", "task": "segmentation", "file": str(checkpoint.resolve()),
        "sha256": _sha256(checkpoint), "bundled": False, "trained_with_sonocad": __version__}]
    assert provenance["backend"] == "torch" and provenance["sonocad_version"] == __version__
    assert provenance["command_line"] == sys.argv
    # The folder's marker says the same beside the command, which still reads as before.
    assert _marker(out) == {"command": "predict", **provenance} and output_of(out) == "predict"
    # The table keeps its own format: the rows, and nothing else.
    rows = json.loads((out / "predictions.json").read_text())
    assert isinstance(rows, list) and len(rows) == len(result.rows) == 1
    assert rows[0]["image_id"] == read_predictions(out / "predictions.csv")[0]["image_id"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="the bundled model runs on ONNX Runtime only with the onnx extra")
def test_the_bundled_models_onnx_twin_is_the_recorded_file(tmp_path: Path) -> None:
    out = tmp_path / "out"
    predict([png(tmp_path / "in" / "a.png", size=(64, 80))], out)

    provenance = _provenance(out)
    (model,) = provenance["models"]
    assert provenance["backend"] == "onnx" and model["bundled"]
    assert Path(model["file"]).name == "default.onnx"
    assert model["sha256"] == _sha256(Path(model["file"]))


def test_evaluate_records_the_checkpoint_it_scored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_phantom_dataset(data, per_class=3, size=(40, 56))
    split = tmp_path / "split.json"
    write_split(split, make_split(open_dataset(data), [], fractions=(0.34, 0.33, 0.33)))
    checkpoint = unet_checkpoint(tmp_path / "seg.pt", 5.0)
    out = tmp_path / "eval"
    evaluate(checkpoint, data, f"{split}:test", out, overlays=0, n_boot=20)

    (model,) = _provenance(out)["models"]
    assert model["file"] == str(checkpoint.resolve()) and model["sha256"] == _sha256(checkpoint)
    assert _marker(out) == {"command": "evaluate", **_provenance(out)}
