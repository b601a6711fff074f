"""Validation during training: the loss and the metrics a recipe may select on.

Segmentation is scored per image at the model's input resolution (fast; `sonocad evaluate`
scores at each image's own size) with the conventions of `sonocad.evaluation.segmentation`.
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

from sonocad.data.torch_dataset import SampleDataset
from sonocad.engine.distributed import World, gather_lists
from sonocad.evaluation.segmentation import confusion, overlap_metrics

DEFAULT_SELECT_METRIC = {"segmentation": "dice", "classification": "accuracy",
                         "detection": "loss"}


@torch.no_grad()
def validate(model: nn.Module, dataset: SampleDataset, task: str,
             loss_fn: Callable[[Any, Any], torch.Tensor], world: World, *,
             batch_size: int = 16) -> dict[str, float]:
    was_training = model.training
    model.eval()
    indices = list(range(world.rank, len(dataset), world.size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size)
    rows: list[dict[str, float]] = []
    for batch in loader:
        images = batch["image"].to(world.device)
        outputs = model(images)
        if task == "segmentation":
            target = batch["mask"].to(world.device)
            rows += _segmentation_rows(outputs["out"], target, loss_fn(outputs, target))
        else:
            labels = batch["label"].to(world.device)
            losses = [loss_fn(outputs[i:i + 1], labels[i:i + 1]).item()
                      for i in range(len(labels))]
            preds = outputs.argmax(1).tolist()
            rows += [{"loss": loss, "label": int(y), "pred": p}
                     for loss, y, p in zip(losses, labels.tolist(), preds)]
    model.train(was_training)
    rows = gather_lists(rows, world)
    if task == "segmentation":
        return {k: _nanmean([r[k] for r in rows]) for k in ("loss", "dice", "iou")}
    labels = [r["label"] for r in rows]
    preds = [r["pred"] for r in rows]
    return {"loss": _nanmean([r["loss"] for r in rows]),
            "accuracy": float(np.mean(np.equal(labels, preds))),
            "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}


def _segmentation_rows(logits: torch.Tensor, target: torch.Tensor,
                       batch_loss: torch.Tensor) -> list[dict[str, float]]:
    predicted = (logits > 0).cpu().numpy()[:, 0]  # logit > 0 <=> probability > 0.5
    truth = target.cpu().numpy()[:, 0] > 0.5
    rows = []
    for t, p in zip(truth, predicted):
        metrics = overlap_metrics(confusion(t, p))
        rows.append({"loss": batch_loss.item(), "dice": metrics["dice"], "iou": metrics["iou"]})
    return rows


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
