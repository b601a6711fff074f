"""`predict`: inputs (files, folders, globs, DICOM cine loops), outputs, the table, failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage

from conftest import benign_classifier_checkpoint, png, tree_digest
from sonocad.data.phantom import make_phantom, write_phantom_dataset
from sonocad.errors import SonocadError
from sonocad.pictures import DIAMETER_COLOUR
from sonocad.predictions import read_predictions
from sonocad.visual import PREDICTION_COLOUR
from sonocad.workflows.predict import predict


def test_phantom_folder_writes_every_output_and_leaves_the_inputs_alone(
        tmp_path: Path, lesion_everywhere: Path) -> None:
    data = tmp_path / "data"
    write_phantom_dataset(data, per_class=1, size=(40, 56))
    before = tree_digest(data)
    result = predict([data], tmp_path / "out", checkpoint=lesion_everywhere, batch_size=2)

    assert result.ok and tree_digest(data) == before
    images = sorted(name for name in before if "_mask" not in name)  # masks are skipped
    assert sorted(r["image_id"] for r in result.rows) == images
    out = tmp_path / "out"
    row = next(r for r in result.rows if r["image_id"] == "benign/benign (1).png")
    assert row["output_name"] == "benign/benign (1)" and row["frame"] is None
    assert (row["width"], row["height"]) == (56, 40)
    mask = np.array(PILImage.open(out / "masks" / "benign" / "benign (1).png"))
    assert mask.shape == (40, 56) and (mask == 255).all()
    assert row["lesion_detected"] == 1 and row["lesion_area_px"] == 40 * 56
    assert row["lesion_diameter_px"] == pytest.approx(math.hypot(39, 55))
    assert math.isnan(row["lesion_area_mm2"])  # a PNG has no pixel spacing

    # The overlay outlines the lesion: its rim is drawn (but where a caliper or its length
    # covers it: on a 56 x 40 image the four length labels take much of it), its longest
    # diameter (corner to corner here) is a line, and much of its inside still shows the tissue.
    image = np.array(PILImage.open(data / "benign" / "benign (1).png"))
    overlay = np.array(PILImage.open(out / "overlays" / "benign" / "benign (1).png"))
    assert overlay.shape == (40, 56, 3)
    rim = np.concatenate([overlay[0], overlay[-1], overlay[:, 0], overlay[:, -1]])
    assert (rim == PREDICTION_COLOUR).all(axis=1).mean() > 0.25
    assert tuple(overlay[0, 0]) == DIAMETER_COLOUR
    assert (overlay[10:30, 10:46] == image[10:30, 10:46, None]).all(axis=2).mean() > 0.1
    assert np.array(PILImage.open(out / "heatmaps" / "benign" / "benign (1).png")).shape == \
        (40, 56, 3)

    table = read_predictions(out / "predictions.csv")
    assert len(table) == len(result.rows)
    assert len(json.loads((out / "predictions.json").read_text())) == len(result.rows)


def test_no_lesion_gives_empty_masks_and_blank_sizes(tmp_path: Path, no_lesion: Path) -> None:
    result = predict([png(tmp_path / "x.png")], tmp_path / "out", checkpoint=no_lesion)
    (row,) = result.rows
    assert row["lesion_detected"] == 0 and row["lesion_area_px"] == 0
    assert math.isnan(row["lesion_diameter_px"])
    assert not np.array(PILImage.open(tmp_path / "out" / "masks" / "x.png")).any()
    assert read_predictions(tmp_path / "out" / "predictions.csv")[0]["lesion_diameter_px"] is None


def test_unreadable_file_is_reported_and_the_rest_predicted(
        tmp_path: Path, lesion_everywhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    png(folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    result = predict([folder], tmp_path / "out", checkpoint=lesion_everywhere)

    assert not result.ok
    assert [f.path.name for f in result.failures] == ["bad.png"]
    assert [r["image_id"] for r in result.rows] == ["good.png"]
    assert (tmp_path / "out" / "masks" / "good.png").is_file()
    assert not (tmp_path / "out" / "masks" / "bad.png").exists()
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "bad.png" in errors[0]


def _cine_loop(path: Path, frames: int, shape: tuple[int, int],
               spacing: tuple[float, float]) -> Path:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pixels = np.stack([make_phantom("malignant", size=shape, seed=i).image
                       for i in range(frames)])
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.PixelSpacing = list(spacing)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_every_frame_of_a_dicom_cine_loop_is_predicted_in_mm(
        tmp_path: Path, lesion_everywhere: Path) -> None:
    loop = _cine_loop(tmp_path / "loop.dcm", 3, (36, 48), (0.1, 0.2))
    result = predict([loop], tmp_path / "out", checkpoint=lesion_everywhere, batch_size=2)

    assert result.ok
    assert [r["frame"] for r in result.rows] == [1, 2, 3]
    assert [r["output_name"] for r in result.rows] == [f"loop_frame00{i}" for i in (1, 2, 3)]
    for row in result.rows:
        assert row["image_id"] == "loop.dcm"
        assert row["lesion_area_mm2"] == pytest.approx(36 * 48 * 0.1 * 0.2)
        assert row["lesion_diameter_mm"] == pytest.approx(math.hypot(35 * 0.1, 47 * 0.2))
        assert (tmp_path / "out" / "masks" / f"{row['output_name']}.png").is_file()
    table = read_predictions(tmp_path / "out" / "predictions.csv")
    assert table[2]["lesion_area_mm2"] == pytest.approx(36 * 48 * 0.02, rel=1e-5)


def test_inputs_with_the_same_stem_get_their_own_outputs(
        tmp_path: Path, lesion_everywhere: Path) -> None:
    first = png(tmp_path / "a" / "x.png", seed=1, size=(40, 40))
    second = png(tmp_path / "b" / "x.png", seed=2, size=(48, 32))
    result = predict([first, second, first], tmp_path / "out", checkpoint=lesion_everywhere)

    assert [r["output_name"] for r in result.rows] == ["x", "x_2"]  # `first` once only
    assert [r["file"] for r in result.rows] == [str(first), str(second)]
    shapes = [np.array(PILImage.open(tmp_path / "out" / "masks" / f"{name}.png")).shape
              for name in ("x", "x_2")]
    assert shapes == [(40, 40), (48, 32)]


def test_glob_inputs_are_expanded_relative_to_their_root(
        tmp_path: Path, lesion_everywhere: Path) -> None:
    png(tmp_path / "scans" / "left" / "a.png")
    png(tmp_path / "scans" / "right" / "b.png")
    (tmp_path / "scans" / "notes.txt").write_text("not an image")
    result = predict([str(tmp_path / "scans" / "**" / "*"), str(tmp_path / "none*.png")],
                     tmp_path / "out", checkpoint=lesion_everywhere)

    assert [r["image_id"] for r in result.rows] == ["left/a.png", "right/b.png"]
    assert [Path(f.path).name for f in result.failures] == ["none*.png"]
    assert (tmp_path / "out" / "masks" / "right" / "b.png").is_file()


def test_an_earlier_output_folder_is_never_read_back_as_input(
        tmp_path: Path, lesion_everywhere: Path) -> None:
    """Contract changed (issue 16): an output folder inside an input folder is refused, and a
    folder walk or glob leaves out any sonocad output folder it meets."""
    folder = tmp_path / "in"
    png(folder / "a.png")
    with pytest.raises(SonocadError, match="lies inside the input folder"):
        predict([folder], folder / "pred", checkpoint=lesion_everywhere)
    predict([folder], tmp_path / "pred", checkpoint=lesion_everywhere)
    walked = predict([tmp_path], tmp_path.parent / f"{tmp_path.name}-2",
                     checkpoint=lesion_everywhere)
    globbed = predict([str(tmp_path / "**" / "*.png")], tmp_path.parent / f"{tmp_path.name}-3",
                      checkpoint=lesion_everywhere)
    assert [r["image_id"] for r in walked.rows] == ["in/a.png"]
    assert [r["image_id"] for r in globbed.rows] == ["in/a.png"]


def test_annotations_are_not_predicted(tmp_path: Path, lesion_everywhere: Path) -> None:
    """BUSI's "x_mask.png" / "x_mask_1.png", a lone "y_mask.png" (contract changed in issue 16:
    it was predicted), VOC's SegmentationClass/ and a masks/ folder beside images/."""
    for name in ("benign/x.png", "benign/x_mask.png", "benign/x_mask_1.png",
                 "benign/y_mask.png", "voc/JPEGImages/v.png", "voc/SegmentationClass/v.png",
                 "voc/SegmentationObject/v.png", "folder/images/f.png", "folder/masks/f.png"):
        png(tmp_path / "data" / name)
    result = predict([tmp_path / "data"], tmp_path / "pred", checkpoint=lesion_everywhere)
    assert [r["image_id"] for r in result.rows] == [
        "benign/x.png", "folder/images/f.png", "voc/JPEGImages/v.png"]


def test_classifier_writes_probabilities_a_captioned_overlay_and_grad_cam(
        tmp_path: Path) -> None:
    checkpoint = benign_classifier_checkpoint(tmp_path / "cls.pt")
    image = png(tmp_path / "in" / "x.png", size=(64, 80))
    result = predict([image], tmp_path / "out", checkpoint=checkpoint)

    (row,) = result.rows
    benign = math.exp(2) / (2 + math.exp(2))
    assert row["predicted_class"] == "benign"
    assert row["prob_benign"] == pytest.approx(benign, abs=1e-6)
    assert row["prob_normal"] == pytest.approx((1 - benign) / 2, abs=1e-6)
    assert "lesion_area_px" not in row
    assert not (tmp_path / "out" / "masks").exists()
    heat = PILImage.open(tmp_path / "out" / "heatmaps" / "x.png")
    assert heat.size == (80, 64)  # Grad-CAM over the image at its own size
    overlay = np.array(PILImage.open(tmp_path / "out" / "overlays" / "x.png"))
    original = np.array(PILImage.open(image))
    assert overlay.shape == (64, 80, 3)
    # A black box with white text near the top-left corner (the caption; contract changed
    # with the new pictures: the box is inset from the edges and may wrap to two lines).
    corner = overlay[:40, :80]
    assert (corner == 0).all(axis=2).mean() > 0.3 and (corner > 200).all(axis=2).any()
    assert (overlay[48:, :, 0] == original[48:]).all()  # the rest untouched


def test_bad_arguments_are_clear_errors(tmp_path: Path, lesion_everywhere: Path) -> None:
    (tmp_path / "out.txt").write_text("")
    with pytest.raises(SonocadError, match="not a folder"):
        predict([], tmp_path / "out.txt", checkpoint=lesion_everywhere)
    with pytest.raises(SonocadError, match="batch size"):
        predict([], tmp_path / "out", checkpoint=lesion_everywhere, batch_size=0)
    with pytest.raises(SonocadError, match="no such checkpoint"):
        predict([], tmp_path / "out", checkpoint=tmp_path / "missing.pt")


def test_a_batch_never_holds_more_pixels_than_one_image_at_the_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sonocad.io.pixels import Image
    from sonocad.workflows import predict as predict_module

    monkeypatch.setattr(predict_module, "MAX_IMAGE_PIXELS", 5000)
    image = Image(np.zeros((40, 56), np.uint8))  # 2240 pixels: two fit, a third does not
    items = [predict_module._Item(predict_module._Source(Path(f"{i}.png"), f"{i}.png"), None,
                                  str(i), image, None) for i in range(5)]
    assert [len(b) for b in predict_module._batches(items, 8)] == [2, 2, 1]
    assert [len(b) for b in predict_module._batches(items, 1)] == [1] * 5


def test_spacing_comes_from_the_file_then_the_manifest_then_the_option(
        tmp_path: Path, lesion_everywhere: Path) -> None:
    plain = png(tmp_path / "in" / "plain.png", size=(40, 50))
    png(tmp_path / "in" / "listed.png", size=(40, 50))
    loop = _cine_loop(tmp_path / "in" / "loop.dcm", 1, (36, 48), (0.1, 0.2))
    manifest = tmp_path / "in" / "manifest.csv"
    manifest.write_text("image,patient_id,pixel_spacing_mm\nlisted.png,P7,0.05\n")
    result = predict([loop, plain, manifest], tmp_path / "out",
                     checkpoint=lesion_everywhere, spacing_mm=(0.3, 0.3))
    by_id = {row["image_id"]: row for row in result.rows}
    assert (by_id["loop.dcm"]["spacing_source"], by_id["loop.dcm"]["spacing_mm"]) == (
        "dicom", "0.1 x 0.2")
    assert (by_id["listed.png"]["spacing_source"], by_id["listed.png"]["spacing_mm"]) == (
        "manifest", 0.05)
    assert by_id["listed.png"]["patient_id"] == "P7"
    assert (by_id["plain.png"]["spacing_source"], by_id["plain.png"]["spacing_mm"]) == (
        "option", 0.3)
    assert by_id["plain.png"]["lesion_area_mm2"] == pytest.approx(40 * 50 * 0.09)
    assert by_id["listed.png"]["lesion_diameter_mm"] == pytest.approx(math.hypot(39, 49) * 0.05)
    table = {row["image_id"]: row for row in read_predictions(tmp_path / "out" / "predictions.csv")}
    assert table["plain.png"]["spacing_source"] == "option"


def test_dicom_out_writes_a_segmentation_and_a_report_for_dicom_inputs(
        tmp_path: Path, lesion_everywhere: Path, capsys: pytest.CaptureFixture) -> None:
    import highdicom as hd
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    from sonocad.cli import main

    png(tmp_path / "in" / "plain.png")
    loop = _cine_loop(tmp_path / "in" / "loop.dcm", 2, (36, 48), (0.1, 0.2))
    ds = dcmread(loop)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "US"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(loop)
    _cine_loop(tmp_path / "in" / "anonymous.dcm", 1, (36, 48), (0.1, 0.2))
    before = tree_digest(tmp_path / "in")
    code = main(["predict", str(lesion_everywhere), str(tmp_path / "in"), "--out",
                 str(tmp_path / "out"), "--dicom-out"])
    assert code == 1  # the DICOM without UIDs cannot take derived objects; the rest go on
    errors = [line for line in capsys.readouterr().err.splitlines() if "anonymous.dcm" in line]
    assert len(errors) == 1 and "UID" in errors[0]
    assert sorted(p.name for p in (tmp_path / "out" / "dicom").iterdir()) == [
        "loop_seg.dcm", "loop_sr.dcm"]
    seg = hd.seg.segread(tmp_path / "out" / "dicom" / "loop_seg.dcm")
    assert seg.StudyInstanceUID == ds.StudyInstanceUID and seg.NumberOfFrames == 2
    assert dcmread(tmp_path / "out" / "dicom" / "loop_sr.dcm").StudyInstanceUID == \
        ds.StudyInstanceUID
    table = read_predictions(tmp_path / "out" / "predictions.csv")
    assert sorted(row["image_id"] for row in table) == ["anonymous.dcm", "loop.dcm",
                                                        "loop.dcm", "plain.png"]
    assert tree_digest(tmp_path / "in") == before
