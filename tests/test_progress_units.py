"""Progress on every wait, counted in units (images, not batches), one line format on stderr;
and checks that can fail before a long wait (a scanner name, lesion counts) come first."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_UNET_RECIPE
from sonocad import progress as progress_module
from sonocad.cli import main
from sonocad.data import duplicates
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.evaluation import combined_runner
from sonocad.progress import progress, waiting
from sonocad.tasks.base import predict_samples


@pytest.fixture
def every_update(monkeypatch: pytest.MonkeyPatch) -> None:
    """A progress line at every update, as a wait of minutes would have."""
    monkeypatch.setattr(progress_module, "FIRST_LOG_S", 0.0)
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_a_log_line_names_its_unit_and_counts_what_each_item_holds(
        every_update: None, capsys: pytest.CaptureFixture[str]) -> None:
    batches = [[1, 2, 3], [4, 5, 6], [7]]
    assert list(progress(batches, "evaluating", 7, unit="images", size=len)) == batches
    lines = _lines(capsys)
    assert [line.split(",")[0] for line in lines] == [
        "sonocad: evaluating 3/7", "sonocad: evaluating 6/7", "sonocad: evaluating 7/7"]
    assert all(" images/s" in line for line in lines)


def test_a_short_loop_prints_nothing(monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_module, "FIRST_LOG_S", 60.0)
    assert list(progress(range(3), "checking", unit="images")) == [0, 1, 2]
    assert _lines(capsys) == []


def test_evaluation_counts_images_not_batches(every_update: None, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write_phantom_dataset(tmp_path / "data", per_class=2, size=(32, 40))
    samples = open_dataset(tmp_path / "data")

    class Model:
        def predict(self, images: list[np.ndarray]) -> list[None]:
            return [None] * len(images)

    assert len(list(predict_samples(Model(), samples, batch_size=4))) == 6
    lines = _lines(capsys)
    assert lines[-1].startswith("sonocad: evaluating 6/6, ") and " images/s" in lines[-1]
    assert len(lines) == 2  # one per batch of 4 and 2 images


def test_a_call_with_nothing_to_count_says_it_is_still_working(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(progress_module, "FIRST_LOG_S", 0.05)
    with waiting("exporting model.pt to ONNX"):
        time.sleep(0.3)
    assert _lines(capsys) == ["sonocad: exporting model.pt to ONNX, 0 s so far"]
    monkeypatch.setattr(progress_module, "FIRST_LOG_S", 60.0)
    with waiting("exporting model.pt to ONNX"):
        pass
    assert _lines(capsys) == []


def test_a_wrong_hold_out_scanner_is_refused_before_any_image_is_hashed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    write_phantom_dataset(tmp_path / "data", per_class=1, size=(32, 40))
    manifest = tmp_path / "data" / "manifest.csv"
    rows = [f"{path.relative_to(tmp_path / 'data').as_posix()},LOGIQ"
            for path in sorted((tmp_path / "data").rglob("*).png"))]
    manifest.write_text("image,scanner\n" + "\n".join(rows) + "\n")

    def hashed(*_: object, **__: object) -> None:
        raise AssertionError("hashed before the scanner name was checked")

    monkeypatch.setattr(duplicates, "find_duplicate_groups", hashed)
    assert main(["data", "split", str(manifest), "--out", str(tmp_path / "split.json"),
                 "--hold-out-scanner", "Toshiba"]) == 2
    assert "no image of scanner 'Toshiba' in the data set (scanners: LOGIQ)" in _lines(
        capsys)[-1]


def test_combine_counts_the_lesions_before_fitting_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from sonocad.data.clinical_synth import SYNTHETIC, write_synthetic_clinical
    from sonocad.predictions import write_predictions

    labels = ["benign"] * 14 + ["malignant"] * 6
    ids = [f"{i}.png" for i in range(len(labels))]
    write_predictions(tmp_path / "fit", [
        {"image_id": i, "patient_id": None, "label": label, "predicted_class": "normal",
         "malignant_score": 0.5} for i, label in zip(ids, labels)])
    clinical = write_synthetic_clinical(tmp_path / f"clinical_{SYNTHETIC}.csv", ids, labels)

    def fitted(*_: object, **__: object) -> None:
        raise AssertionError("fitted before the lesions were counted")

    monkeypatch.setattr(combined_runner, "fit_clinical_model", fitted)
    table = str(tmp_path / "fit.csv")
    assert main(["combine", "--fit", table, "--test", table, "--clinical", str(clinical),
                 "--out", str(tmp_path / "out")]) == 2
    assert _lines(capsys)[-1].endswith(
        "combined models need at least 10 benign and 10 malignant training lesions; the "
        "fitting table has 14 benign and 6 malignant")


def test_validation_after_training_shows_its_progress_in_images(
        every_update: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sonocad.data.split import make_split, write_split

    data, split, recipe = tmp_path / "data", tmp_path / "split.json", tmp_path / "tiny.yaml"
    write_phantom_dataset(data, per_class=2, size=(32, 32))
    write_split(split, make_split(open_dataset(data), [], fractions=(0.5, 0.5, 0.0)))
    recipe.write_text(TINY_UNET_RECIPE)
    assert main(["train", str(recipe), "max_steps=1", "--data", str(data), "--split",
                 str(split), "--out", str(tmp_path / "run")]) == 0
    validating = [line for line in _lines(capsys) if line.startswith("sonocad: validating")]
    assert validating and validating[-1].startswith("sonocad: validating 3/3, ")
    assert " images/s" in validating[-1]
