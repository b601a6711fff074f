"""`sonocad data check`: every problem named by file, duplicates found, exit code 1 on errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonocad.cli import main
from sonocad.data.phantom import make_phantom


def png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def mask_of(phantom) -> np.ndarray:
    return phantom.mask.astype(np.uint8) * 255


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    root = tmp_path / "messy"
    good = make_phantom("benign", size=(96, 128), seed=1)
    png(root / "benign" / "benign (1).png", good.image)
    png(root / "benign" / "benign (1)_mask.png", mask_of(good))
    # The same scan filed again as malignant: a cross-label duplicate.
    png(root / "malignant" / "malignant (1).png", good.image)
    png(root / "malignant" / "malignant (1)_mask.png", mask_of(good))
    other = make_phantom("malignant", size=(96, 128), seed=2)
    png(root / "malignant" / "malignant (2).png", other.image)
    png(root / "malignant" / "malignant (2)_mask.png", np.zeros((50, 50), np.uint8))  # wrong size
    third = make_phantom("benign", size=(96, 128), seed=3)
    png(root / "benign" / "benign (2).png", third.image)
    png(root / "benign" / "benign (2)_mask.png", np.zeros((96, 128), np.uint8))  # empty
    fourth = make_phantom("benign", size=(96, 128), seed=4)
    grey = mask_of(fourth) // 2
    grey[0, 0] = 7
    png(root / "benign" / "benign (3).png", fourth.image)
    png(root / "benign" / "benign (3)_mask.png", grey)  # non-binary
    (root / "benign" / "benign (4).png").write_text("not an image")
    (root / "benign" / "benign (4)_mask.png").write_bytes(b"")
    return root


def test_check_reports_every_problem_by_file_and_exits_1(messy, tmp_path, capsys):
    report_path = tmp_path / "report.json"
    assert main(["data", "check", str(messy), "--json", str(report_path)]) == 1
    out = capsys.readouterr().out
    assert "6 images" in out and "benign 4, malignant 2" in out
    report = json.loads(report_path.read_text())
    problems = {(p["severity"], Path(p["path"]).name): p["message"] for p in report["problems"]}
    assert "mask is 50x50 but the image is 128x96" in problems[
        ("error", "malignant (2)_mask.png")]
    assert ("error", "benign (4).png") in problems
    assert "empty mask" in problems[("warning", "benign (2).png")]
    assert "non-binary" in problems[("warning", "benign (3)_mask.png")]
    cross = problems[("warning", "benign (1).png")]
    assert "benign, malignant" in cross and "malignant/malignant (1).png" in cross
    [group] = report["duplicate_groups"]
    assert group["exact"] and group["cross_label"]
    assert report["n_errors"] == 2 and report["width_range"] == [128, 128]


def test_check_of_clean_phantoms_passes(tmp_path, capsys):
    assert main(["data", "phantom", str(tmp_path / "ph"), "--per-class", "2"]) == 0
    assert main(["data", "check", str(tmp_path / "ph")]) == 0
    assert "0 errors" in capsys.readouterr().out


def test_missing_mask_and_unknown_label_are_errors(tmp_path):
    image = make_phantom("benign", size=(64, 64), seed=4).image
    png(tmp_path / "a.png", image)
    png(tmp_path / "b.png", make_phantom("normal", size=(64, 64), seed=5).image)
    (tmp_path / "m.csv").write_text("image,label\na.png,malignant\nb.png,cyst\n")
    from sonocad.data.adapters import open_dataset
    from sonocad.data.check import check_dataset

    report = check_dataset(tmp_path, open_dataset(tmp_path / "m.csv"))
    messages = sorted(p.message for p in report.errors)
    assert messages[0].startswith("missing mask for a malignant image")
    assert messages[1].startswith("unknown label 'cyst'")


@pytest.mark.busi
def test_busi_check_counts_classes_masks_and_duplicates(busi_root, capsys):
    code = main(["data", "check", str(busi_root)])
    out = capsys.readouterr().out
    assert code == 0
    assert "780 images" in out and "benign 437, malignant 210, normal 133" in out
    assert "extra masks merged into their image's lesion mask: 18" in out
    groups = int(out.split("duplicate groups: ")[1].split()[0])
    assert groups >= 24, "BUSI holds dozens of re-cropped copies"
