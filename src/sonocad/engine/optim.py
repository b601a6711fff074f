"""Optimisers and learning-rate schedules named in a recipe.

Schedules are stepped once per optimiser step (``cosine``, ``warmup_cosine``) or once per
validation (``plateau``, which watches the validation loss as the Front Oncol 2025 recipe does).
All are torch's own: ``warmup_cosine`` is `LinearLR` then `CosineAnnealingLR` in `SequentialLR`.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
)

from sonocad.engine.recipe import OptimizerSection, SchedulerSection


def build_optimizer(params, config: OptimizerSection) -> torch.optim.Optimizer:
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: SchedulerSection,
                    total_steps: int) -> LRScheduler | ReduceLROnPlateau | None:
    name, args = config.name, config.args
    if name == "none":
        return None
    floor = float(args.get("min_lr_ratio", 0.0))
    if name == "cosine":
        return _cosine(optimizer, total_steps, floor)
    if name == "warmup_cosine":
        # Linear warm-up to the recipe's lr over `warmup` steps ((step + 1) / warmup), then
        # the cosine over the rest.
        warmup = int(args.get("warmup_steps", max(1, total_steps // 20)))
        ramp = LinearLR(optimizer, start_factor=1 / warmup, total_iters=max(warmup - 1, 1))
        return SequentialLR(optimizer, [ramp, _cosine(optimizer, total_steps - warmup, floor)],
                            milestones=[warmup])
    return ReduceLROnPlateau(optimizer, mode="min", factor=float(args.get("factor", 0.1)),
                             patience=int(args.get("patience", 10)))  # "plateau"


def steps_per_optimizer_step(scheduler) -> bool:
    """Whether the scheduler advances every optimiser step (else once per validation)."""
    return scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau)


def _cosine(optimizer: torch.optim.Optimizer, steps: int, floor: float) -> CosineAnnealingLR:
    """Half a cosine from the recipe's lr down to `floor` x lr over `steps` optimiser steps
    (one learning rate: sonocad's optimisers have one parameter group)."""
    (group,) = optimizer.param_groups
    base = group.get("initial_lr", group["lr"])  # a warm-up before it has lowered "lr"
    return CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=floor * base)
