"""Losses, built by name from a recipe's ``loss`` section (each task picks its own).

A multitask model (segmentation and classification from one encoder) sums its segmentation
loss and a weighted cross-entropy; its targets are (mask, labels).

Segmentation losses take the model's output dict ({"out", "aux"}) and a float target
(N, 1, H, W) in {0, 1}; deep-supervision maps in "aux" add ``aux_weight`` times their loss
(U2-Net sums all seven outputs with weight 1; torchvision's FCN/DeepLab aux head uses 0.5).
Dice is computed per image and then averaged, so a batch split over DDP ranks gives the same
loss as the whole batch in one process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sonocad.errors import SonocadError

SMOOTH = 1.0  # keeps Dice defined (= 1) when an image has no lesion and none is predicted


def soft_dice_per_image(probs: Tensor, target: Tensor) -> Tensor:
    """Soft Dice coefficient of each image, shape (N,)."""
    dims = tuple(range(1, probs.ndim))
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (2 * intersection + SMOOTH) / (total + SMOOTH)


def dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    return (1 - soft_dice_per_image(torch.sigmoid(logits), target)).mean()


def weighted_dice_loss(logits: Tensor, target: Tensor, weights: Sequence[float]) -> Tensor:
    """Class-weighted Dice over (background, lesion), as in the JMIR 2026 paper."""
    probs = torch.sigmoid(logits)
    background = 1 - soft_dice_per_image(1 - probs, 1 - target)
    lesion = 1 - soft_dice_per_image(probs, target)
    w_background, w_lesion = weights
    return ((w_background * background + w_lesion * lesion) / (w_background + w_lesion)).mean()


def bce_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target)


SEGMENTATION_LOSSES: dict[str, Callable[..., Tensor]] = {
    "dice": dice_loss,
    "weighted_dice": weighted_dice_loss,
    "bce_dice": bce_dice_loss,
    "bce": F.binary_cross_entropy_with_logits,
}


def cross_entropy(args: dict[str, Any]) -> Callable[[Tensor, Tensor], Tensor]:
    weights = args.pop("class_weights", None)
    weight = torch.tensor(weights, dtype=torch.float32) if weights else None
    return lambda logits, labels: F.cross_entropy(
        logits, labels, weight=None if weight is None else weight.to(logits.device), **args)


def multitask_loss(name: str, args: dict[str, Any],
                   classification: dict[str, Any]) -> Callable[[dict, tuple], Tensor]:
    """Segmentation loss + ``classification.weight`` x cross-entropy on "class_logits";
    ``classification.args`` go to the cross-entropy (class_weights, label_smoothing)."""
    segmentation = segmentation_loss(name, args)
    weight = float(classification.get("weight", 1.0))
    class_loss = cross_entropy(dict(classification.get("args") or {}))

    def loss(outputs: dict[str, Any], targets: tuple[Tensor, Tensor]) -> Tensor:
        mask, labels = targets
        return segmentation(outputs, mask) + weight * class_loss(outputs["class_logits"], labels)

    return loss


def segmentation_loss(name: str, args: dict[str, Any]) -> Callable[[dict, Tensor], Tensor]:
    if name not in SEGMENTATION_LOSSES:
        raise SonocadError(f"unknown segmentation loss {name!r}; known: "
                           f"{', '.join(SEGMENTATION_LOSSES)}")
    aux_weight = float(args.pop("aux_weight", 1.0))
    base = SEGMENTATION_LOSSES[name]

    def loss(outputs: dict[str, Any], target: Tensor) -> Tensor:
        total = base(outputs["out"], target, **args)
        for aux in outputs.get("aux") or []:
            total = total + aux_weight * base(aux, target, **args)
        return total

    return loss
