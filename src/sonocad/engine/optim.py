"""Optimisers and learning-rate schedules named in a recipe.

Schedules are stepped once per optimiser step (``cosine``, ``warmup_cosine``) or once per
validation (``plateau``, which watches the validation loss as the Front Oncol 2025 recipe does).
All are torch's own: ``warmup_cosine`` is `LinearLR` then `CosineAnnealingLR` in `SequentialLR`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    ReduceLROnPlateau,
    SequentialLR,
)

from sonocad.errors import SonocadError


def build_optimizer(params, config: dict[str, Any]) -> torch.optim.Optimizer:
    name = config["name"].lower()
    lr, weight_decay = float(config["lr"]), float(config["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(config["momentum"]),
                               weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=lr, betas=tuple(config["betas"]), weight_decay=weight_decay)
    raise SonocadError(f"unknown optimizer {name!r}; known: sgd, adam, adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any],
                    total_steps: int) -> LRScheduler | ReduceLROnPlateau | None:
    name, args = config["name"].lower(), dict(config.get("args") or {})
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
    if name == "plateau":
        return ReduceLROnPlateau(optimizer, mode="min", factor=float(args.get("factor", 0.1)),
                                 patience=int(args.get("patience", 10)))
    raise SonocadError(f"unknown scheduler {name!r}; known: none, cosine, warmup_cosine, plateau")


def steps_per_optimizer_step(scheduler) -> bool:
    """Whether the scheduler advances every optimiser step (else once per validation)."""
    return scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau)


def _cosine(optimizer: torch.optim.Optimizer, steps: int, floor: float) -> CosineAnnealingLR:
    """Half a cosine from the recipe's lr down to `floor` x lr over `steps` optimiser steps
    (one learning rate: sonocad's optimisers have one parameter group)."""
    (group,) = optimizer.param_groups
    base = group.get("initial_lr", group["lr"])  # a warm-up before it has lowered "lr"
    return CosineAnnealingLR(optimizer, T_max=max(steps, 1), eta_min=floor * base)
