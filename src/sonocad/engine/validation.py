"""Validation during training: the loss and the metrics a recipe may select on.

The loop is the same for every task; the task scores each batch (`Task.validation_rows`) and
turns the rows into metrics (`Task.validation_metrics`). Each DDP rank scores its share of the
validation set; the rows are gathered on every rank. With several data sources each source's
figures come beside the pooled ones that selection uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sonocad.data.torch_dataset import SampleDataset, collate
from sonocad.engine.distributed import World, gather_lists
from sonocad.progress import progress
from sonocad.tasks import Task


@torch.no_grad()
def validate(model: nn.Module, dataset: SampleDataset, task: Task,
             loss_fn: Callable[[Any, Any], torch.Tensor], world: World, *,
             batch_size: int = 16) -> dict[str, float]:
    was_training = model.training
    model.eval()
    indices = list(range(world.rank, len(dataset), world.size))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                        collate_fn=collate)
    rows: list[tuple[str | None, Any]] = []
    # Rank 0 alone shows its share: one line, not one per process.
    shown = (progress(loader, "validating", len(indices), unit="images",
                      size=lambda batch: len(batch["index"]))
             if world.is_main else loader)
    for batch in shown:
        sources = [dataset.samples[i].source for i in batch["index"].tolist()]
        rows += zip(sources, task.validation_rows(model, batch, loss_fn, world.device))
    model.train(was_training)
    rows = gather_lists(rows, world)
    classes = dataset.class_names
    metrics = task.validation_metrics([row for _, row in rows], classes)
    sources = sorted({source for source, _ in rows if source})
    if len(sources) > 1:
        for source in sources:
            part = task.validation_metrics([row for s, row in rows if s == source], classes)
            metrics |= {f"{source}_{k}": v for k, v in part.items() if k != "loss"}
    return metrics
