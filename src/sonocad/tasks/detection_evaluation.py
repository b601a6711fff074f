"""Detection's evaluation (Mask R-CNN, QIMS 2023): the predictions table and AP/AUROC.

Outputs in ``out``:
- predictions.csv / predictions.json, one row per image: ids, true label, the model columns of
  `sonocad.predictions` (``predicted_class``: the class of the top instance scoring at least
  `INSTANCE_THRESHOLD`, "normal" without one; ``malignant_score``: the highest
  malignant-instance score, 0 without one, QIMS 2023's image-level score; ``benign_score``
  likewise; ``n_instances``, ``instances`` and the lesion columns) and ``n_truth_instances``;
- instances.json (compact): {image_id: [{label, score, box [x0, y0, x1, y1], polygons}]} in the
  image's own pixels, every instance the model returned (AP needs the low scores too); the
  outlines (polygons [[[x, y], ...]], OpenCV's outer contours) only for instances scoring at
  least `INSTANCE_THRESHOLD`, since those of the many low-scoring ones are mostly noise;
- metrics.json: box and mask AP50 / mAP@[.5:.95] with per-class values and 95 % bootstrap CIs
  over images, and the image-level AUROC of the malignancy score for malignant against benign
  images with DeLong's 95 % CI;
- precision_recall.png: box precision-recall per class at IoU 0.5;
- examples/: lesion images spread over the malignancy ranking, truth outlined in green and the
  found instances drawn in their boxes with class and score.

Truth instances are the connected lesions of each image's mask (`sonocad.data.instances`), in
the image's own pixels, labelled with the image's class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from matplotlib.figure import Figure

from sonocad.data.instances import class_instances
from sonocad.data.sample import LESION_CLASSES, Sample
from sonocad.errors import SonocadError
from sonocad.evaluation.detection import (
    ImageInstances,
    ScoredImage,
    bootstrap_ap,
    box_and_mask_ap,
    precision_recall,
    score_image,
)
from sonocad.evaluation.figures import save_figure
from sonocad.evaluation.statistics import delong_auroc
from sonocad.io.atomic import save_png, write_json, write_text
from sonocad.pictures import overlay_picture
from sonocad.predictions import prediction_columns, sample_columns, write_predictions
from sonocad.progress import progress
from sonocad.tasks.base import EvaluationResult, PredictorLike
from sonocad.tasks.detection_outputs import INSTANCE_THRESHOLD, detected
from sonocad.visual import TRUTH_COLOUR, draw_outlines


def evaluate_detection(model: PredictorLike, samples: list[Sample], out: str | Path,
                       split_spec: str, *, batch_size: int = 2, n_boot: int = 1000,
                       examples: int = 6,
                       checkpoint: str | Path | None = None) -> EvaluationResult:
    """Detect lesions in `samples`; write the predictions table, instances, metrics (AP with
    bootstrap CIs over images), the precision-recall curves and `examples` drawn detections."""
    out = Path(out)
    if not samples:
        raise SonocadError(f"{split_spec}: no images to evaluate")
    class_names = model.class_names
    rows: list[dict[str, Any]] = []
    scored: list[ScoredImage] = []
    instances: dict[str, list[dict[str, Any]]] = {}
    for start in progress(range(0, len(samples), batch_size), "evaluating",
                          len(samples), unit="images",
                          size=lambda start: min(batch_size, len(samples) - start)):
        chunk = samples[start:start + batch_size]
        images = [sample.load_image() for sample in chunk]
        found = model.predict([image.pixels for image in images])
        for sample, image, predicted in zip(chunk, images, found):
            truth = _truth(sample, image.shape, class_names)
            scored.append(score_image(predicted, truth))
            rows.append({**sample_columns(sample), **prediction_columns(
                detected(predicted, class_names), image.spacing_mm),
                "n_truth_instances": len(truth)})
            instances[sample.image_id] = _instance_records(predicted, class_names)
    summary = _summary(rows, scored, class_names, n_boot)
    summary.update(model=model.info.model.name, split=split_spec,
                   **({"checkpoint": str(checkpoint)} if checkpoint is not None else {}))
    write_predictions(out / "predictions", rows)
    write_text(out / "instances.json", json.dumps(instances, separators=(",", ":")) + "\n")
    write_json(out / "metrics.json", summary)
    save_figure(out / "precision_recall.png", precision_recall_figure(scored, class_names))
    _draw_examples(model, samples, rows, examples, out / "examples")
    return EvaluationResult(out, rows, summary)


def precision_recall_figure(scored: list[ScoredImage], class_names: list[str]) -> Figure:
    """Box precision-recall per lesion class at IoU 0.5, its AP in the legend."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    aps = box_and_mask_ap(scored, class_names)[0]["per_class"]
    for label, name in enumerate(class_names):
        if label == 0 or not aps[name]["n_truth"]:
            continue
        recall, precision = precision_recall(scored, label)
        axes.step(np.r_[0, recall], np.r_[1, precision], where="post",
                  label=f"{name} (AP50 {aps[name]['ap50']:.3f}, {aps[name]['n_truth']} lesions)")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (of all truth lesions)",
             ylabel="precision", title="Precision-recall, box IoU 0.5")
    axes.legend(loc="lower left", fontsize="small")
    return figure


def _draw_examples(model: PredictorLike, samples: list[Sample],
                   rows: list[dict[str, Any]], count: int, folder: Path) -> None:
    """`count` lesion images spread over the malignancy ranking (lowest first): truth outlined
    in green, found instances in their boxes with class and score."""
    ranked = sorted((i for i, row in enumerate(rows) if row["n_truth_instances"]),
                    key=lambda i: rows[i].get("malignant_score", 0.0))
    if not ranked or count < 1:
        return
    picks = np.unique(np.linspace(0, len(ranked) - 1, min(count, len(ranked))).round())
    for rank in picks.astype(int):
        sample = samples[ranked[rank]]
        image = sample.load_image()
        (found,) = model.predict([image.pixels])
        truth = sample.load_mask(image.pixels.shape[:2])
        canvas = image.pixels if truth is None else draw_outlines(image.pixels,
                                                                  [(truth, TRUTH_COLOUR)])
        picture = overlay_picture(canvas, detected(found, model.class_names), image.spacing_mm)
        stem = Path(sample.image_id).stem.replace(" ", "_")
        save_png(folder / f"rank{rank + 1:03d}_{stem}.png", picture)


def _truth(sample: Sample, shape: tuple[int, int], class_names: list[str]) -> ImageInstances:
    mask = sample.load_mask(shape)
    found, labels = class_instances(mask if mask is not None else np.zeros(shape, dtype=bool),
                                    sample.label, class_names, sample.image_id)
    return ImageInstances(found.boxes, labels, found.masks)


def _instance_records(predicted: ImageInstances,
                      class_names: list[str]) -> list[dict[str, Any]]:
    masks = predicted.masks if predicted.masks is not None else [None] * len(predicted)
    return [{"label": class_names[int(label)], "score": round(float(score), 4),
             "box": [round(float(v), 1) for v in box],
             "polygons": (mask_polygons(mask)
                          if mask is not None and score >= INSTANCE_THRESHOLD else [])}
            for label, score, box, mask in zip(predicted.labels, predicted.scores,
                                               predicted.boxes, masks)]


def mask_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """Outer outlines of a binary mask as polygons of [x, y] pixel vertices (OpenCV)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return [contour[:, 0, :].tolist() for contour in contours]


def _summary(rows: list[dict[str, Any]], scored: list[ScoredImage],
             class_names: list[str], n_boot: int) -> dict[str, Any]:
    box, mask = box_and_mask_ap(scored, class_names)
    lesion_classes = {i: name for i, name in enumerate(class_names) if i}
    intervals = {kind: bootstrap_ap(scored, lesion_classes, iou=kind, n_boot=n_boot)
                 for kind in ("box", "mask")}

    def with_ci(kind: str, value: float, name: str) -> dict[str, float]:
        low, high = intervals[kind][name]
        return {"mean": value, "ci_low": low, "ci_high": high}

    lesion_rows = [r for r in rows if r["label"] in LESION_CLASSES]
    auroc = delong_auroc([int(r["label"] == "malignant") for r in lesion_rows],
                         [r.get("malignant_score", 0.0) for r in lesion_rows])
    return {
        "task": "detection",
        "n_images": len(rows),
        "reduction": "COCO-style AP pooled over all instances (box and mask IoU; AP50 at IoU "
                     "0.5, mAP over IoU 0.50:0.95; classes averaged) with 95 % percentile "
                     f"bootstrap CIs over images ({n_boot} resamples); image-level AUROC of "
                     "the malignancy score (top malignant-instance score), malignant vs "
                     "benign images, DeLong 95 % CI",
        "groups": {"all": {
            "n_images": len(rows),
            "ap50": with_ci("box", box["ap50"], "ap50"),
            "map": with_ci("box", box["map"], "map"),
            "mask_ap50": with_ci("mask", mask["ap50"], "ap50"),
            "mask_map": with_ci("mask", mask["map"], "map"),
            "auroc": {"mean": auroc.auroc, "ci_low": auroc.ci_low, "ci_high": auroc.ci_high,
                      "n_positive": auroc.n_positive, "n_negative": auroc.n_negative}}},
        "detection": {"box": box, "mask": mask},
        "instance_threshold": INSTANCE_THRESHOLD,
    }
