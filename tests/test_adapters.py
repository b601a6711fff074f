"""Every dataset layout becomes the same Samples; problems name their file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sonocad.data.adapters import detect_layout, open_dataset
from sonocad.errors import InputError
from sonocad.io.annotations import MaskFormat, Shape, save_voc_mask, write_labelme


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def image(value: int = 100) -> np.ndarray:
    return np.full((20, 30), value, np.uint8)


def square_mask() -> np.ndarray:
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:15] = 255
    return mask


def test_busi_layout_merges_extra_masks_and_reads_labels(tmp_path):
    png(tmp_path / "benign" / "benign (1).png", image())
    png(tmp_path / "benign" / "benign (1)_mask.png", square_mask())
    second = np.zeros((20, 30), np.uint8)
    second[15:18, 20:25] = 255
    png(tmp_path / "benign" / "benign (1)_mask_1.png", second)
    png(tmp_path / "normal" / "normal (1).png", image())
    png(tmp_path / "normal" / "normal (1)_mask.png", np.zeros((20, 30), np.uint8))
    assert detect_layout(tmp_path) == "busi"
    samples = open_dataset(tmp_path)
    assert [s.image_id for s in samples] == ["benign/benign (1).png", "normal/normal (1).png"]
    benign = samples[0]
    assert benign.label == "benign" and len(benign.mask_paths) == 2
    assert benign.mask_paths[0].name == "benign (1)_mask.png"
    assert benign.load_mask((20, 30)).sum() == 50 + 15


def test_folder_layout_with_class_subfolders(tmp_path):
    png(tmp_path / "images" / "malignant" / "a.png", image())
    png(tmp_path / "masks" / "a.png", square_mask())
    png(tmp_path / "images" / "normal" / "b.png", image())
    samples = open_dataset(tmp_path)
    assert [(s.image_id, s.label, len(s.mask_paths)) for s in samples] == [
        ("malignant/a.png", "malignant", 1), ("normal/b.png", "normal", 0)]
    assert samples[1].load_mask((20, 30)) is None


def test_voc_layout_takes_the_label_from_the_mask_classes(tmp_path):
    png(tmp_path / "JPEGImages" / "x.png", image())
    classes = np.zeros((20, 30), np.uint8)
    classes[2:6, 2:6] = 2
    classes[0, :] = 255  # VOC void border is not lesion
    (tmp_path / "SegmentationClass").mkdir()
    save_voc_mask(tmp_path / "SegmentationClass" / "x.png", classes,
                  ["_background_", "benign", "malignant"])
    (tmp_path / "class_names.txt").write_text("_background_\nbenign\nmalignant\n")
    [sample] = open_dataset(tmp_path)
    assert sample.mask_format is MaskFormat.VOC and sample.label == "malignant"
    assert sample.load_mask((20, 30)).sum() == 16


def test_labelme_folder(tmp_path):
    png(tmp_path / "scan.png", image())
    write_labelme(tmp_path / "scan.json", "scan.png", (20, 30),
                  [Shape("benign", "rectangle", [[2, 3], [11, 7]])])
    [sample] = open_dataset(tmp_path)
    assert sample.label == "benign" and sample.image_path.name == "scan.png"
    assert sample.load_mask((20, 30)).sum() == 10 * 5


def test_csv_manifest_with_patients_spacing_and_clinical_columns(tmp_path):
    png(tmp_path / "img" / "1.png", image())
    png(tmp_path / "img" / "1_mask.png", square_mask())
    png(tmp_path / "img" / "2.png", image())
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,mask,label,patient_id,pixel_spacing_mm,age,brca\n"
                        "img/1.png,img/1_mask.png,Malignant,P1,0.1,54,1\n"
                        "img/2.png,,normal,P1,0.08;0.09,54,1\n")
    first, second = open_dataset(manifest)
    assert first.label == "malignant" and first.patient_id == "P1"
    assert first.pixel_spacing_mm == (0.1, 0.1) and second.pixel_spacing_mm == (0.08, 0.09)
    assert first.clinical == {"age": "54", "brca": "1"}
    assert first.group_id == second.group_id == "P1"
    assert first.load_image().spacing_mm == (0.1, 0.1)


def test_bad_manifest_spacing_names_the_file_and_line(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,pixel_spacing_mm\na.png,-1\n")
    with pytest.raises(InputError, match=r"m\.csv: line 2: pixel_spacing_mm"):
        open_dataset(manifest)


def test_missing_and_unrecognisable_datasets(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        open_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="layout"):
        open_dataset(tmp_path / "empty")


@pytest.mark.busi
def test_busi_counts(busi_root):
    samples = open_dataset(busi_root)
    labels = [s.label for s in samples]
    assert len(samples) == 780
    assert (labels.count("benign"), labels.count("malignant"), labels.count("normal")) == (
        437, 210, 133)
    assert sum(len(s.mask_paths) - 1 for s in samples) == 18
