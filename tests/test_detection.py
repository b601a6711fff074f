"""Detection (QIMS 2023 Mask R-CNN): instances from masks, AP by hand, train / resume /
evaluate on tiny phantoms, and the recipe on BUSI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import phantom_dataset
from sonocad.checkpoint import load_checkpoint
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.instances import mask_instances
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.data.torch_dataset import SampleDataset, collate
from sonocad.evaluation.detection import ImageInstances, detection_ap, score_image
from sonocad.tasks import get_task
from sonocad.transforms import build_transform

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "qims2023_maskrcnn.yaml"
# The shipped recipe, shrunk: 128 px in and inside the model, one image per step.
TINY = ["transform.input_size=128", "model.args.min_size=128", "model.args.max_size=128",
        "batch_size=2", "eval_batch_size=2", "data.cache=false"]
CLASSES = {1: "benign", 2: "malignant"}


# --- instances from masks -------------------------------------------------------------------

def test_each_connected_lesion_is_an_instance_with_an_edge_box_and_specks_are_dropped():
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:20, 30:50] = True  # 200 px
    mask[60:90, 5:15] = True  # 300 px
    mask[20, 50] = True  # touches the first lesion at a corner: the same lesion
    mask[95, 95] = True  # a 1 px speck, under 2e-4 of the image: dropped
    found = mask_instances(mask, min_fraction=2e-4)
    assert len(found) == 2
    np.testing.assert_array_equal(found.boxes, [[5, 60, 15, 90], [30, 10, 51, 21]])
    assert found.masks.shape == (2, 100, 100) and found.masks[1, 20, 50]
    assert found.masks.sum() == 300 + 201


def test_an_empty_mask_has_no_instances_and_a_one_pixel_lesion_a_positive_box():
    empty = mask_instances(np.zeros((8, 8), dtype=bool))
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.masks.shape == (0, 8, 8)
    dot = np.zeros((8, 8), dtype=bool)
    dot[3, 4] = True
    np.testing.assert_array_equal(mask_instances(dot).boxes, [[4, 3, 5, 4]])


# --- AP by hand -----------------------------------------------------------------------------

def _instances(boxes, labels, scores=None, size=20) -> ImageInstances:
    masks = np.zeros((len(boxes), size, size), dtype=bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    return ImageInstances(np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels), masks,
                          None if scores is None else np.array(scores, dtype=float))


def _ap(pairs, iou="box"):
    return detection_ap([score_image(p, t) for p, t in pairs], CLASSES, iou=iou)


@pytest.mark.parametrize("iou", ["box", "mask"])
def test_perfect_predictions_score_one(iou):
    truth = _instances([[0, 0, 10, 10], [12, 12, 18, 18]], [1, 2])
    predicted = _instances([[0, 0, 10, 10], [12, 12, 18, 18]], [1, 2], [0.9, 0.8])
    result = _ap([(predicted, truth)], iou)
    assert result["ap50"] == result["map"] == 1.0
    assert result["per_class"]["malignant"] == {"ap50": 1.0, "map": 1.0, "n_truth": 1}


def test_a_false_positive_costs_only_when_it_outranks_the_true_positive():
    truth = _instances([[0, 0, 10, 10]], [1])
    low_fp = _instances([[0, 0, 10, 10], [12, 12, 18, 18]], [1, 1], [0.9, 0.3])
    high_fp = _instances([[0, 0, 10, 10], [12, 12, 18, 18]], [1, 1], [0.3, 0.9])
    assert _ap([(low_fp, truth)])["ap50"] == 1.0
    # Ranked: FP (precision 0/1), TP (precision 1/2, recall 1) -> AP = 1 x 1/2.
    assert _ap([(high_fp, truth)])["ap50"] == pytest.approx(0.5)


def test_a_missed_lesion_about_halves_ap_and_a_wrong_class_is_a_miss():
    truths = [_instances([[0, 0, 10, 10]], [1]), _instances([[5, 5, 15, 15]], [1])]
    found_one = [_instances([[0, 0, 10, 10]], [1], [0.9]), _instances([], [], [])]
    # COCO's 101 recall points: precision 1 at recall 0, 0.01, ..., 0.50 and 0 beyond.
    assert _ap(zip(found_one, truths))["ap50"] == pytest.approx(51 / 101)
    wrong_class = [_instances([[0, 0, 10, 10]], [2], [0.9]), _instances([], [], [])]
    result = _ap(zip(wrong_class, truths))
    assert result["per_class"]["benign"]["ap50"] == 0.0
    assert np.isnan(result["per_class"]["malignant"]["ap50"])  # no truth: not averaged
    assert result["ap50"] == 0.0


def test_map_averages_iou_thresholds_and_classes():
    # IoU 0.72 (10 x 7.2 inside 10 x 10) passes 0.50 ... 0.70: 5 of the 10 thresholds.
    truth = _instances([[0, 0, 10, 7.2], [12, 12, 18, 18]], [1, 2])
    predicted = _instances([[0, 0, 10, 10], [12, 12, 18, 18]], [1, 2], [0.9, 0.9])
    result = _ap([(predicted, truth)])
    assert result["per_class"]["benign"]["map"] == pytest.approx(0.5)
    assert result["map"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["ap50"] == 1.0


# --- dataset, training, evaluation on phantoms ----------------------------------------------

@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, Path]:
    return phantom_dataset(tmp_path_factory.mktemp("detection"), 4, (64, 64), seed=7)


def test_the_dataset_yields_instance_targets_and_collate_keeps_them_a_list(phantoms):
    data, _ = phantoms
    samples = [s for s in open_dataset(data) if s.label in ("normal", "malignant")][:3]
    transform = build_transform({"input_size": 48, "normalize": "unit"}, train=False)
    dataset = SampleDataset(samples, get_task("detection"), ["background", "benign", "malignant"],
                            transform, cache=False)
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape == (3, 3, 48, 48) and isinstance(batch["target"], list)
    for sample, target in zip(samples, batch["target"]):
        n = len(target["boxes"])
        assert target["masks"].shape == (n, 48, 48) and target["masks"].dtype == torch.uint8
        assert target["labels"].tolist() == [2] * n
        assert (n == 0) == (sample.label == "normal")
        if n:  # the box encloses its mask exactly
            ys, xs = np.nonzero(target["masks"][0].numpy())
            assert target["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1,
                                                   ys.max() + 1]


def test_maskrcnn_trains_resumes_and_evaluates_with_ap_and_auroc(phantoms, tmp_path, capsys):
    data, split = phantoms
    run = tmp_path / "run"
    train = ["train", str(RECIPE), "--data", str(data), "--split", str(split), "--out", str(run),
             *TINY, "max_steps=1"]
    assert main(train) == 0
    assert main([*train[:-1], "max_steps=2", "--resume"]) == 0  # on from step 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["select_metric"] == "ap50"
    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert {"val_ap50", "val_map", "val_mask_ap50", "val_mask_map"} <= set(rows[0])
    meta = load_checkpoint(run / "best.pt").meta
    assert meta["task"] == "detection"
    assert meta["class_names"] == ["background", "benign", "malignant"]
    assert meta["model"]["args"] == {"min_size": 128, "max_size": 128, "num_classes": 3}

    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--split",
                 f"{split}:test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ap50" in printed and "mask_map" in printed and "auroc" in printed
    with open(out / "predictions.csv") as handle:
        table = list(csv.DictReader(handle))
    test_ids = read_split(split).subsets["test"]
    assert [r["image_id"] for r in table] == sorted(test_ids)
    assert {"predicted_class", "malignant_score", "benign_score", "n_instances",
            "n_truth_instances"} <= set(table[0])
    instances = json.loads((out / "instances.json").read_text())
    assert set(instances) == set(test_ids)
    for image_id, found in instances.items():
        row = next(r for r in table if r["image_id"] == image_id)
        malignant = [i["score"] for i in found if i["label"] == "malignant"]
        assert float(row["malignant_score"]) == pytest.approx(max(malignant, default=0.0),
                                                              abs=1e-4)
        assert all(i["polygons"] == [] for i in found if i["score"] < 0.5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "detection"
    assert set(metrics["detection"]) == {"box", "mask"}
    ap50 = metrics["groups"]["all"]["ap50"]
    assert ap50["mean"] == metrics["detection"]["box"]["ap50"]
    assert ap50["ci_low"] <= ap50["mean"] <= ap50["ci_high"]


# --- the recipe on real images --------------------------------------------------------------

@pytest.mark.busi
def test_the_qims_recipe_trains_two_steps_on_busi_and_prints_ap_and_auroc(busi_root, tmp_path,
                                                                          capsys):
    frozen = read_split(ROOT / "benchmarks" / "splits" / "busi.json")
    # Two benign and two malignant images per subset, so AP and AUROC are defined.
    subsets = {name: tuple([i for i in ids if i.startswith("benign/")][:2]
                           + [i for i in ids if i.startswith("malignant/")][:2])
               for name, ids in frozen.subsets.items()}
    split = tmp_path / "small.json"
    write_split(split, SplitFile("BUSI", 0, "2 benign + 2 malignant of busi.json", subsets))
    run = tmp_path / "run"
    assert main(["train", str(RECIPE), "--data", str(busi_root), "--split", str(split),
                 "--out", str(run), *TINY, "max_steps=2"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.pt"), "--data", str(busi_root), "--split",
                 f"{split}:test", "--out", str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "ap50" in printed and "auroc" in printed
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["groups"]["all"]["auroc"]["n_positive"] == 2
