"""Pixel spacing: one grammar that reads what predict writes, and one precedence (the file's own
calibration, then the manifest, then the option) for every command."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from PIL import Image as PILImage

from sonocad.cli import main
from sonocad.data.adapters import read_manifest
from sonocad.data.phantom import make_phantom
from sonocad.io.spacing import parse_spacing, resolve_spacing, spacing_text


@pytest.mark.parametrize(("text", "expected"), [
    ("0.1", (0.1, 0.1)), ("0.1,0.2", (0.1, 0.2)), ("0.1 x 0.2", (0.1, 0.2)),
    ("0.1x0.2", (0.1, 0.2)), ("0.1;0.2", (0.1, 0.2)), (" 0.1  0.2 ", (0.1, 0.2))])
def test_the_grammar(text: str, expected: tuple[float, float]) -> None:
    assert parse_spacing(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-0.1", "a", "0.1,0.2,0.3", "nan", "inf x 1"])
def test_what_is_not_a_spacing(text: str) -> None:
    with pytest.raises(ValueError, match="not one or two positive numbers"):
        parse_spacing(text)


@pytest.mark.parametrize("spacing", [(0.1, 0.1), (0.1, 0.2), (0.262287877, 0.5)])
def test_what_predict_writes_reads_back(spacing: tuple[float, float]) -> None:
    assert parse_spacing(str(spacing_text(spacing))) == pytest.approx(spacing)


def test_the_precedence() -> None:
    assert resolve_spacing((0.3, 0.3), (0.2, 0.2), (0.1, 0.1)) == ((0.3, 0.3), "dicom")
    assert resolve_spacing(None, (0.2, 0.2), (0.1, 0.1)) == ((0.2, 0.2), "manifest")
    assert resolve_spacing(None, None, (0.1, 0.1)) == ((0.1, 0.1), "option")
    assert resolve_spacing(None) == (None, None)


def test_predict_takes_back_the_spacing_it_wrote(tmp_path: Path) -> None:
    image = tmp_path / "in" / "scan.png"
    image.parent.mkdir()
    PILImage.fromarray(make_phantom("benign", size=(96, 128), seed=1).image).save(image)
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["predict", str(image), "--spacing", "0.1,0.2", "--out", str(first),
                 "--outputs", "table"]) == 0
    (row,) = csv.DictReader((first / "predictions.csv").open())
    assert row["spacing_mm"] == "0.1 x 0.2"
    assert main(["predict", str(image), "--spacing", row["spacing_mm"], "--out", str(second),
                 "--outputs", "table"]) == 0
    (again,) = csv.DictReader((second / "predictions.csv").open())
    assert again["spacing_mm"] == "0.1 x 0.2"


def test_evaluate_and_predict_measure_a_dicom_in_a_manifest_alike(tmp_path: Path) -> None:
    """A DICOM listed in a manifest with another spacing: the file's own calibration wins for
    evaluate (a sample's image) and predict (a manifest input) alike."""
    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed")
    source = Path(data_store.DataStore().data_path) / "OBXXXX1A.dcm"
    shutil.copyfile(source, tmp_path / "scan.dcm")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,pixel_spacing_mm\nscan.dcm,0.5\n", encoding="utf-8")
    (sample,) = read_manifest(manifest)
    evaluated = sample.load_image().spacing_mm
    out = tmp_path / "out"
    assert main(["predict", str(manifest), "--out", str(out), "--outputs", "table"]) == 0
    (row,) = csv.DictReader((out / "predictions.csv").open())
    assert evaluated == pytest.approx((0.262287877, 0.262287877))
    assert row["spacing_source"] == "dicom"
    assert parse_spacing(row["spacing_mm"]) == pytest.approx(evaluated)
