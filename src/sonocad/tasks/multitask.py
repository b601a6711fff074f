"""Multitask: a lesion map and a class from one encoder (the default model), built from the
segmentation and classification tasks.

Validation gives both sets of metrics plus ``lesion_iou`` (IoU over images with a lesion) and
``joint``, the mean of lesion IoU and macro-F1: one number to select on for both heads.
Evaluation scores it as both: the segmentation outputs go to ``out``/segmentation, the
classification outputs to ``out``/classification, and ``out`` holds one predictions table with
both sets of columns and a metrics.json whose ``parts`` are the two metrics files. The model
runs once per image: the segmentation pass keeps the (small) class probabilities for the
classification part.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sonocad.data.sample import Sample
from sonocad.io.atomic import write_json
from sonocad.predictions import Prediction, write_predictions
from sonocad.tasks.base import (
    EvaluationResult,
    LossFn,
    Predicted,
    PredictorLike,
    Task,
    nanmean,
    predict_samples,
)
from sonocad.tasks.classification import ClassificationTask, class_metrics, classification_rows
from sonocad.tasks.losses import multitask_loss
from sonocad.tasks.segmentation import SegmentationTask, segmentation_rows


class MultitaskTask(Task):
    name = "multitask"
    select_metric = "joint"
    reads_masks = labelled = lesion_map = class_scores = True
    output_names = (*SegmentationTask.output_names, *ClassificationTask.output_names)

    def __init__(self) -> None:
        self.segmentation, self.classification = SegmentationTask(), ClassificationTask()

    def item(self, sample: Sample, mask: Tensor | None,
             class_names: Sequence[str]) -> dict[str, Any]:
        return {**self.segmentation.item(sample, mask, class_names),
                **self.classification.item(sample, mask, class_names)}

    def targets(self, batch: dict[str, Any], device: torch.device) -> tuple[Tensor, Tensor]:
        return (self.segmentation.targets(batch, device),
                self.classification.targets(batch, device))

    def build_loss(self, config: dict[str, Any]) -> LossFn:
        return multitask_loss(config.get("name") or "dice", dict(config.get("args") or {}),
                              dict(config.get("classification") or {}))

    def validation_rows(self, model: nn.Module, batch: dict[str, Any], loss_fn: LossFn,
                        device: torch.device) -> list[dict[str, Any]]:
        outputs = model(batch["image"].to(device))
        targets = self.targets(batch, device)
        segmentation = segmentation_rows(outputs["out"], targets[0], loss_fn(outputs, targets))
        classes = classification_rows(outputs["class_logits"], targets[1], None)
        return [{**a, **b} for a, b in zip(segmentation, classes)]

    def validation_metrics(self, rows: list[dict[str, Any]], class_names: Sequence[str]
                           ) -> dict[str, float]:
        metrics = self.segmentation.validation_metrics(rows, class_names) | class_metrics(rows)
        metrics["lesion_iou"] = nanmean([r["iou"] for r in rows if r["lesion"]])
        metrics["joint"] = (metrics["lesion_iou"] + metrics["macro_f1"]) / 2
        return metrics

    def logits(self, outputs: Any) -> tuple[Tensor, ...]:
        return outputs["out"], outputs["class_logits"]

    def evaluate(self, model: PredictorLike, samples: list[Sample], out: Path,
                 split_spec: str, *, predictions: Iterable[Predicted] | None = None,
                 overlays: int = 6, batch_size: int = 8, n_boot: int = 2000,
                 checkpoint: str | Path | None = None) -> EvaluationResult:
        options = {"batch_size": batch_size, "n_boot": n_boot, "checkpoint": checkpoint}
        class_only: list[Predicted] = []  # lesion maps are large; keep class probabilities

        def recording() -> Iterator[Predicted]:
            made = (predictions if predictions is not None
                    else predict_samples(model, samples, batch_size))
            for sample, image, prediction in made:
                class_only.append((sample, None, Prediction(
                    None, prediction.class_probabilities, prediction.decision)))
                yield sample, image, prediction

        segmentation = self.segmentation.evaluate(model, samples, out / "segmentation",
                                                  split_spec, **options, overlays=overlays,
                                                  predictions=recording())
        classification = self.classification.evaluate(model, samples, out / "classification",
                                                      split_spec, **options,
                                                      predictions=class_only)
        rows = [{**seg, **{k: v for k, v in cls.items() if k not in seg}}
                for seg, cls in zip(segmentation.rows, classification.rows, strict=True)]
        summary = {"task": self.name, "model": model.info.model.name,
                   "split": split_spec, "checkpoint": str(checkpoint), "n_images": len(rows),
                   "parts": {"segmentation": segmentation.metrics,
                             "classification": classification.metrics}}
        write_predictions(out / "predictions", rows)
        write_json(out / "metrics.json", summary)
        return EvaluationResult(out, rows, summary)
