"""Validation during training: the loss and the metrics a recipe may select on.

Segmentation is scored per image at the model's input resolution (fast; `sonocad evaluate`
scores at each image's own size) with the conventions of `sonocad.evaluation.segmentation`.
A multitask model gets both sets of metrics plus ``lesion_iou`` (IoU over images with a lesion)
and ``joint``, the mean of lesion IoU and macro-F1, one number to select on for both heads.
A detector is scored with COCO-style AP (`sonocad.evaluation.detection`) at the model's input
resolution: ``ap50`` and ``map`` on box IoU, ``mask_ap50`` and ``mask_map`` on mask IoU. It has
no validation loss (torchvision computes losses only in training mode, where batch-norm
statistics would move and proposals are sampled at random), so it selects on ``ap50``.
Each DDP rank scores its share of the validation set; the rows are gathered on every rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader

from sonocad.data.torch_dataset import SampleDataset, collate
from sonocad.engine.distributed import World, gather_lists
from sonocad.evaluation.detection import (ScoredImage, box_and_mask_ap, from_torchvision,
                                          score_image)
from sonocad.evaluation.segmentation import confusion, overlap_metrics

DEFAULT_SELECT_METRIC = {"segmentation": "dice", "classification": "accuracy",
                         "detection": "ap50", "multitask": "joint"}


@torch.no_grad()
def validate(model: nn.Module, dataset: SampleDataset, task: str,
             loss_fn: Callable[[Any, Any], torch.Tensor], world: World, *,
             batch_size: int = 16) -> dict[str, float]:
    was_training = model.training
    model.eval()
    indices = list(range(world.rank, len(dataset), world.size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                        collate_fn=collate)
    if task == "detection":
        metrics = _detection_metrics(model, loader, dataset.class_names, world)
        model.train(was_training)
        return metrics
    rows: list[dict[str, float]] = []
    for batch in loader:
        images = batch["image"].to(world.device)
        outputs = model(images)
        sources = [dataset.samples[i].source for i in batch["index"].tolist()]
        if task == "segmentation":
            target = batch["mask"].to(world.device)
            rows += _segmentation_rows(outputs["out"], target, loss_fn(outputs, target))
        elif task == "multitask":
            targets = (batch["mask"].to(world.device), batch["label"].to(world.device))
            segmentation = _segmentation_rows(outputs["out"], targets[0],
                                              loss_fn(outputs, targets))
            classification = _classification_rows(outputs["class_logits"], targets[1], None)
            rows += [{**a, **b} for a, b in zip(segmentation, classification)]
        else:
            rows += _classification_rows(outputs, batch["label"].to(world.device), loss_fn)
        for row, source in zip(rows[-len(sources):], sources):
            row["source"] = source
    model.train(was_training)
    rows = gather_lists(rows, world)
    metrics = _metrics(rows, task)
    sources = sorted({r["source"] for r in rows if r["source"]})
    if len(sources) > 1:  # each source's figures beside the pooled ones selection uses
        for source in sources:
            part = _metrics([r for r in rows if r["source"] == source], task)
            metrics |= {f"{source}_{k}": v for k, v in part.items() if k != "loss"}
    return metrics


def _metrics(rows: list[dict[str, Any]], task: str) -> dict[str, float]:
    metrics: dict[str, float] = {"loss": _nanmean([r["loss"] for r in rows])}
    if task in ("segmentation", "multitask"):
        metrics |= {k: _nanmean([r[k] for r in rows]) for k in ("dice", "iou")}
    if task in ("classification", "multitask"):
        labels = [r["label"] for r in rows]
        preds = [r["pred"] for r in rows]
        metrics |= {"accuracy": float(np.mean(np.equal(labels, preds))),
                    "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}
    if task == "multitask":
        metrics["lesion_iou"] = _nanmean([r["iou"] for r in rows if r["lesion"]])
        metrics["joint"] = (metrics["lesion_iou"] + metrics["macro_f1"]) / 2
    return metrics


def _detection_metrics(model: nn.Module, loader: DataLoader, class_names: list[str],
                       world: World) -> dict[str, float]:
    scored: list[ScoredImage] = []
    for batch in loader:
        outputs = model(list(batch["image"].to(world.device)))
        scored += [score_image(from_torchvision(output), from_torchvision(target))
                   for output, target in zip(outputs, batch["target"])]
    scored = gather_lists(scored, world)
    box, mask = box_and_mask_ap(scored, class_names)
    return {"ap50": box["ap50"], "map": box["map"],
            "mask_ap50": mask["ap50"], "mask_map": mask["map"]}


def _classification_rows(logits: torch.Tensor, labels: torch.Tensor,
                         loss_fn: Callable[[Any, Any], torch.Tensor] | None
                         ) -> list[dict[str, float]]:
    """Label and prediction per image; the loss per image when `loss_fn` is given."""
    preds = logits.argmax(1).tolist()
    rows = [{"label": int(y), "pred": p} for y, p in zip(labels.tolist(), preds)]
    if loss_fn is not None:
        for i, row in enumerate(rows):
            row["loss"] = loss_fn(logits[i:i + 1], labels[i:i + 1]).item()
    return rows


def _segmentation_rows(logits: torch.Tensor, target: torch.Tensor,
                       batch_loss: torch.Tensor) -> list[dict[str, float]]:
    predicted = (logits > 0).cpu().numpy()[:, 0]  # logit > 0 <=> probability > 0.5
    truth = target.cpu().numpy()[:, 0] > 0.5
    rows = []
    for t, p in zip(truth, predicted):
        metrics = overlap_metrics(confusion(t, p))
        rows.append({"loss": batch_loss.item(), "dice": metrics["dice"], "iou": metrics["iou"],
                     "lesion": bool(t.any())})
    return rows


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
