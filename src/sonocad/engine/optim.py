"""Optimisers and learning-rate schedules named in a recipe.

Schedules are stepped once per optimiser step (``cosine``, ``warmup_cosine``) or once per
validation (``plateau``, which watches the validation loss as the Front Oncol 2025 recipe does).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

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
    if name == "cosine":
        floor = float(args.get("min_lr_ratio", 0.0))
        return LambdaLR(optimizer, lambda step: _cosine(step, total_steps, floor))
    if name == "warmup_cosine":
        warmup = int(args.get("warmup_steps", max(1, total_steps // 20)))
        floor = float(args.get("min_lr_ratio", 0.0))
        return LambdaLR(optimizer, lambda step: (step + 1) / warmup if step < warmup
                        else _cosine(step - warmup, total_steps - warmup, floor))
    if name == "plateau":
        return ReduceLROnPlateau(optimizer, mode="min", factor=float(args.get("factor", 0.1)),
                                 patience=int(args.get("patience", 10)))
    raise SonocadError(f"unknown scheduler {name!r}; known: none, cosine, warmup_cosine, plateau")


def steps_per_optimizer_step(scheduler) -> bool:
    """Whether the scheduler advances every optimiser step (else once per validation)."""
    return scheduler is not None and not isinstance(scheduler, ReduceLROnPlateau)


def _cosine(step: int, total: int, floor: float) -> float:
    progress = min(step / max(total, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
