"""Detection AP against the reference: pycocotools' COCOeval on synthetic boxes and masks,
with tied scores and truths of equal IoU (where COCO gives a prediction the last truth)."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from sonocad.evaluation.detection import ImageInstances, detection_ap, score_image

pycocotools = pytest.importorskip("pycocotools", reason="pycocotools (test extra) not installed")
from pycocotools import mask as coco_mask  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CLASSES = {1: "benign", 2: "malignant"}
SHAPE = (64, 80)


def _ellipse(box: np.ndarray) -> np.ndarray:
    """A filled ellipse inside `box` (x0, y0, x1, y1): mask IoU differs from box IoU."""
    rows, cols = np.ogrid[:SHAPE[0], :SHAPE[1]]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    rx, ry = max((box[2] - box[0]) / 2, 1), max((box[3] - box[1]) / 2, 1)
    return ((cols + 0.5 - cx) / rx) ** 2 + ((rows + 0.5 - cy) / ry) ** 2 <= 1


def _instances(boxes: list, labels: list, scores: list | None = None) -> ImageInstances:
    boxes = np.array(boxes, dtype=float).reshape(-1, 4)
    masks = np.array([_ellipse(b) for b in boxes], dtype=bool).reshape(-1, *SHAPE)
    return ImageInstances(boxes, np.array(labels, dtype=int), masks,
                          None if scores is None else np.array(scores, dtype=float))


def _synthetic(seed: int) -> list[tuple[ImageInstances, ImageInstances]]:
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(12):
        n = int(rng.integers(0, 4))
        corners = rng.uniform([0, 0], [55, 40], (n, 2))
        truth_boxes = np.c_[corners, corners + rng.uniform(8, 24, (n, 2))]
        truth_labels = rng.integers(1, 3, n)
        boxes, labels = [], []
        for box, label in zip(truth_boxes, truth_labels):
            for _ in range(int(rng.integers(0, 3))):  # 0-2 guesses per lesion, some duplicates
                guess = box + rng.normal(0, rng.choice([0.0, 1.5, 5.0]), 4)
                boxes.append(np.r_[guess[:2], np.maximum(guess[2:], guess[:2] + 2)])
                labels.append(label if rng.random() < 0.85 else 3 - label)
        for _ in range(int(rng.integers(0, 3))):  # false positives
            corner = rng.uniform([0, 0], [60, 45])
            boxes.append(np.r_[corner, corner + rng.uniform(5, 15, 2)])
            labels.append(int(rng.integers(1, 3)))
        scores = np.round(rng.uniform(0.05, 1, len(boxes)), 1)  # ties, within and across images
        pairs.append((_instances(boxes, labels, list(scores)),
                      _instances(truth_boxes, list(truth_labels))))
    return pairs


def _coco_ap(pairs, iou_type: str) -> tuple[float, float]:
    """(mAP@[.5:.95], AP50) from COCOeval, every area, up to 100 detections per image."""
    images, truths, found = [], [], []
    for image_id, (predicted, truth) in enumerate(pairs, start=1):
        images.append({"id": image_id, "height": SHAPE[0], "width": SHAPE[1]})
        for kind, instances, target in (("truth", truth, truths), ("found", predicted, found)):
            for i in range(len(instances)):
                x0, y0, x1, y1 = instances.boxes[i]
                rle = coco_mask.encode(np.asfortranarray(instances.masks[i].astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                entry = {"image_id": image_id, "category_id": int(instances.labels[i]),
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "segmentation": rle}
                if kind == "truth":
                    entry.update(id=len(target) + 1, iscrowd=0,
                                 area=float(instances.masks[i].sum()) if iou_type == "segm"
                                 else float((x1 - x0) * (y1 - y0)))
                else:
                    entry["score"] = float(instances.scores[i])
                target.append(entry)
    with contextlib.redirect_stdout(io.StringIO()):  # COCO prints its progress
        ground = COCO()
        ground.dataset = {"images": images, "annotations": truths,
                          "categories": [{"id": k, "name": v} for k, v in CLASSES.items()]}
        ground.createIndex()
        evaluation = COCOeval(ground, ground.loadRes(found), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iou", ["box", "mask"])
def test_ap50_and_map_equal_cocoeval(seed: int, iou: str) -> None:
    pairs = _synthetic(seed)
    ours = detection_ap([score_image(p, t) for p, t in pairs], CLASSES, iou=iou)
    coco_map, coco_ap50 = _coco_ap(pairs, "bbox" if iou == "box" else "segm")
    assert ours["ap50"] == pytest.approx(coco_ap50, abs=1e-9)
    assert ours["map"] == pytest.approx(coco_map, abs=1e-9)


def test_a_prediction_claims_the_last_of_two_truths_of_equal_iou_as_coco_does() -> None:
    # A overlaps both truths at IoU 0.82; B lies exactly on the second. COCO gives A the last
    # truth, so B is left the first at IoU 0.67 (a hit up to threshold 0.65 only); giving A the
    # first would let B hit at every threshold (mAP 1).
    truth = _instances([[0, 0, 10, 10], [2, 0, 12, 10]], [1, 1])
    predicted = _instances([[1, 0, 11, 10], [2, 0, 12, 10]], [1, 1], [0.9, 0.8])
    ours = detection_ap([score_image(predicted, truth, iou=("box",))], CLASSES, iou="box")
    coco_map, coco_ap50 = _coco_ap([(predicted, truth)], "bbox")
    assert ours["map"] == pytest.approx(coco_map, abs=1e-9) and ours["map"] < 0.9
    assert ours["ap50"] == pytest.approx(coco_ap50) == 1.0
