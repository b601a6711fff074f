"""Segmentation: a lesion probability map per image (U2-Net, FCN / DeepLabV3, U-Net).

Validation scores each image at the model's input resolution (fast; `sonocad evaluate` scores
at each image's own size) with `sonocad.evaluation.segmentation`'s conventions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sonocad.data.sample import Sample
from sonocad.evaluation.segmentation import confusion, overlap_metrics
from sonocad.tasks.base import EvaluationResult, LossFn, Predicted, PredictorLike, Task, nanmean
from sonocad.tasks.losses import segmentation_loss
from sonocad.tasks.segmentation_evaluation import evaluate_segmentation


class SegmentationTask(Task):
    name = "segmentation"
    select_metric = "dice"
    reads_masks = True
    lesion_map = True
    output_names = ("lesion_logits",)

    def class_names(self, classes: Sequence[str]) -> list[str]:
        return ["background", "lesion"]

    def head_args(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {}  # one lesion logit per pixel

    def item(self, sample: Sample, mask: Tensor | None,
             class_names: Sequence[str]) -> dict[str, Any]:
        return {"mask": mask}

    def targets(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        return batch["mask"].to(device)

    def build_loss(self, config: dict[str, Any]) -> LossFn:
        return segmentation_loss(config.get("name") or "dice", dict(config.get("args") or {}))

    def validation_rows(self, model: nn.Module, batch: dict[str, Any], loss_fn: LossFn,
                        device: torch.device) -> list[dict[str, Any]]:
        outputs = model(batch["image"].to(device))
        target = self.targets(batch, device)
        return segmentation_rows(outputs["out"], target, loss_fn(outputs, target))

    def validation_metrics(self, rows: list[dict[str, Any]], class_names: Sequence[str]
                           ) -> dict[str, float]:
        return {"loss": nanmean([r["loss"] for r in rows]),
                **{k: nanmean([r[k] for r in rows]) for k in ("dice", "iou")}}

    def logits(self, outputs: Any) -> tuple[Tensor, ...]:
        return (outputs["out"],)  # the "aux" maps only serve deep supervision in training

    def evaluate(self, model: PredictorLike, samples: list[Sample], out: Path,
                 split_spec: str, *, predictions: Iterable[Predicted] | None = None,
                 overlays: int = 6, batch_size: int = 8, n_boot: int = 2000,
                 checkpoint: str | Path | None = None) -> EvaluationResult:
        return evaluate_segmentation(model, samples, out, split_spec, overlays=overlays,
                                     batch_size=batch_size, n_boot=n_boot,
                                     checkpoint=checkpoint, predictions=predictions)


def segmentation_rows(logits: Tensor, target: Tensor, batch_loss: Tensor
                      ) -> list[dict[str, Any]]:
    """Dice, IoU and whether there is a lesion, per image; the batch's loss on each."""
    predicted = (logits > 0).cpu().numpy()[:, 0]  # logit > 0 <=> probability > 0.5
    truth = target.cpu().numpy()[:, 0] > 0.5
    rows = []
    for t, p in zip(truth, predicted):
        metrics = overlap_metrics(confusion(t, p))
        rows.append({"loss": batch_loss.item(), "dice": metrics["dice"], "iou": metrics["iou"],
                     "lesion": bool(t.any())})
    return rows

