"""Classification: class probabilities per image (ResNeXt50-32x4d, ResNet-34/50, AlexNet)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import Tensor, nn

from sonocad.data.sample import Sample
from sonocad.errors import SonocadError
from sonocad.tasks.base import EvaluationResult, LossFn, Predicted, PredictorLike, Task, nanmean
from sonocad.tasks.classification_evaluation import evaluate_classification
from sonocad.tasks.losses import cross_entropy


class ClassificationTask(Task):
    name = "classification"
    select_metric = "accuracy"
    labelled = True
    class_scores = True
    output_names = ("class_logits",)

    def item(self, sample: Sample, mask: Tensor | None,
             class_names: Sequence[str]) -> dict[str, Any]:
        return {"label": list(class_names).index(sample.label)}

    def targets(self, batch: dict[str, Any], device: torch.device) -> Tensor:
        return batch["label"].to(device)

    def build_loss(self, config: dict[str, Any]) -> LossFn:
        if config.get("name") not in (None, "cross_entropy"):
            raise SonocadError(f"loss {config['name']!r} is not a classification loss "
                               "(cross_entropy)")
        return cross_entropy(dict(config.get("args") or {}))

    def validation_rows(self, model: nn.Module, batch: dict[str, Any], loss_fn: LossFn,
                        device: torch.device) -> list[dict[str, Any]]:
        return classification_rows(model(batch["image"].to(device)),
                                   self.targets(batch, device), loss_fn)

    def validation_metrics(self, rows: list[dict[str, Any]], class_names: Sequence[str]
                           ) -> dict[str, float]:
        return {"loss": nanmean([r["loss"] for r in rows]), **class_metrics(rows)}

    def logits(self, outputs: Any) -> tuple[Tensor, ...]:
        return (outputs,)

    def evaluate(self, model: PredictorLike, samples: list[Sample], out: Path,
                 split_spec: str, *, predictions: Iterable[Predicted] | None = None,
                 overlays: int = 6, batch_size: int = 8, n_boot: int = 2000,
                 checkpoint: str | Path | None = None) -> EvaluationResult:
        return evaluate_classification(model, samples, out, split_spec, n_boot=n_boot,
                                       batch_size=batch_size, checkpoint=checkpoint,
                                       predictions=predictions)


def classification_rows(logits: Tensor, labels: Tensor, loss_fn: LossFn | None
                        ) -> list[dict[str, Any]]:
    """Label and prediction per image; the loss per image when `loss_fn` is given."""
    preds = logits.argmax(1).tolist()
    rows: list[dict[str, Any]] = [{"label": int(y), "pred": p}
                                  for y, p in zip(labels.tolist(), preds)]
    if loss_fn is not None:
        for i, row in enumerate(rows):
            row["loss"] = loss_fn(logits[i:i + 1], labels[i:i + 1]).item()
    return rows


def class_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Accuracy and macro-F1 of the rows' labels and predictions."""
    labels, preds = [r["label"] for r in rows], [r["pred"] for r in rows]
    return {"accuracy": float(np.mean(np.equal(labels, preds))),
            "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}
