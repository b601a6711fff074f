"""Progress on every wait, counted in units (images, not batches), one line format on stderr;
and checks that can fail before a long wait (a scanner name, lesion counts) come first."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY_UNET_RECIPE, detector_table
from sonocad import progress as progress_module
from sonocad.cli import main
from sonocad.data import duplicates
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.evaluation import combined_runner
from sonocad.progress import RateLog, progress, time_left, waiting
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


def test_the_time_left_is_paced_on_this_processs_work_plus_the_other_work_to_come() -> None:
    assert time_left(10.0, 5, 20) == 30.0  # 2 s an item, 15 left
    assert time_left(10.0, 7, 20, start=2) == 26.0  # 5 done here (2 before a resume)
    assert time_left(10.0, 5, 20, also_s=45.0) == 75.0  # and three validations of 15 s
    assert time_left(10.0, 2, 20, start=2) is None and time_left(10.0, 5, None) is None


def test_time_spent_on_other_work_is_left_out_of_the_rate_and_the_pace(
        every_update: None, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    clock = [100.0]  # the module's own clock, set by hand: no test of time by sleeping
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    log = RateLog("training step", 20, unit=" images")
    clock[0] = 140.0  # 10 steps in 20 s, then a validation of 20 s
    log.exclude(20.0)
    assert log.left_s(10, also_s=40.0) == 60.0  # 10 steps of 2 s, and two validations
    log.update(10, 40, "loss 0.5", also_left_s=40.0)
    assert _lines(capsys) == ["sonocad: training step 10/20, 2.0 images/s, about 60 s left, "
                              "loss 0.5"]


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
    labels = ["benign"] * 14 + ["malignant"] * 6
    ids = [f"{i}.png" for i in range(len(labels))]
    detector_table(tmp_path / "fit", ids, labels, [0.5] * len(labels))
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


def test_validation_shows_its_progress_in_images_and_training_counts_its_time(
        every_update: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sonocad.data.split import make_split, write_split

    data, split, recipe = tmp_path / "data", tmp_path / "split.json", tmp_path / "tiny.yaml"
    write_phantom_dataset(data, per_class=2, size=(32, 32))
    write_split(split, make_split(open_dataset(data), [], fractions=(0.5, 0.5, 0.0)))
    recipe.write_text(TINY_UNET_RECIPE)
    # 3 training images in a batch of 4: an epoch is one step, and a validation follows each.
    assert main(["train", str(recipe), "train.epochs=2", "--data", str(data), "--split",
                 str(split), "--out", str(tmp_path / "run")]) == 0
    lines = _lines(capsys)
    validating = [line for line in lines if line.startswith("sonocad: validating")]
    assert validating and validating[-1].startswith("sonocad: validating 3/3, ")
    assert " images/s" in validating[-1]
    training = [line for line in lines if line.startswith("sonocad: training step")]
    assert [line.split(",")[0] for line in training] == ["sonocad: training step 1/2",
                                                        "sonocad: training step 2/2"]
    # Before the first validation the time left cannot hold it, and says so; after, it does.
    assert training[0].endswith(", validation not timed yet")
    assert " left, loss " in training[1] and "not timed" not in training[1]
