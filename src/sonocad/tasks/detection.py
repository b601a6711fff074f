"""Detection: lesion instances per image (Mask R-CNN, QIMS 2023).

Items carry torchvision's target ({"boxes", "labels", "masks"}: one entry per connected lesion
of the augmented mask, all of the image's class; empty for an image without a lesion). The
model returns its own losses in training mode. Validation scores COCO AP at the model's input
resolution: ``ap50`` and ``map`` on box IoU, ``mask_ap50`` and ``mask_map`` on mask IoU. There
is no validation loss (torchvision computes losses only in training mode, where batch-norm
statistics would move and proposals are sampled at random), so it selects on ``ap50``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sonocad.data.instances import class_instances
from sonocad.data.sample import Sample
from sonocad.errors import InputError
from sonocad.evaluation.detection import ScoredImage, box_and_mask_ap, from_torchvision, score_image
from sonocad.predictions import NO_LESION
from sonocad.tasks.base import EvaluationResult, LossFn, Predicted, PredictorLike, Task
from sonocad.tasks.detection_evaluation import evaluate_detection


class DetectionTask(Task):
    name = "detection"
    select_metric = "ap50"
    reads_masks = detector = lesion_map = True
    validation_loss = False  # see the module's docstring

    def check_recipe(self, recipe: Any, path: Path) -> None:
        """torchvision's detectors resize again to their min_size / max_size: make them the
        letterboxed input's sides, so `transform.input_size` (an override too) is what runs; a
        recipe that says otherwise is an error, not a second, silent resize."""
        height, width = recipe.transform.size
        size = recipe.transform.input_size
        args = recipe.model.args
        for key, expected in (("min_size", min(height, width)), ("max_size", max(height, width))):
            if key in args and int(args[key]) != expected:
                raise InputError(path, f"model.args.{key} {args[key]} disagrees with "
                                       f"transform.input_size {size}: leave {key} out, it follows "
                                       "input_size")
            args[key] = expected

    def class_names(self, classes: Sequence[str]) -> list[str]:
        # Instances take their image's class; "normal" images have none to detect.
        return ["background", *(name for name in classes if name != NO_LESION)]

    def item(self, sample: Sample, mask: Tensor | None,
             class_names: Sequence[str]) -> dict[str, Any]:
        instances, labels = class_instances((mask[0] > 0.5).numpy(), sample.label,
                                            list(class_names), sample.image_id)
        return {"target": {"boxes": torch.from_numpy(instances.boxes),
                           "labels": torch.from_numpy(labels),
                           "masks": torch.from_numpy(instances.masks).to(torch.uint8)}}

    def targets(self, batch: dict[str, Any], device: torch.device) -> list[dict[str, Tensor]]:
        return [{k: v.to(device) for k, v in target.items()} for target in batch["target"]]

    def forward(self, model: nn.Module, images: Tensor, targets: Any) -> Any:
        return model(list(images), targets)  # torchvision detectors: their losses

    def build_loss(self, config: dict[str, Any]) -> LossFn:
        return lambda losses, _targets: sum(losses.values())

    def validation_rows(self, model: nn.Module, batch: dict[str, Any], loss_fn: LossFn,
                        device: torch.device) -> list[ScoredImage]:
        outputs = model(list(batch["image"].to(device)))
        return [score_image(from_torchvision(output), from_torchvision(target))
                for output, target in zip(outputs, batch["target"])]

    def validation_metrics(self, rows: list[ScoredImage], class_names: Sequence[str]
                           ) -> dict[str, float]:
        box, mask = box_and_mask_ap(rows, list(class_names))
        return {"ap50": box["ap50"], "map": box["map"],
                "mask_ap50": mask["ap50"], "mask_map": mask["map"]}

    def evaluate(self, model: PredictorLike, samples: list[Sample], out: Path,
                 split_spec: str, *, predictions: Iterable[Predicted] | None = None,
                 overlays: int = 6, batch_size: int = 8, n_boot: int = 2000,
                 checkpoint: str | Path | None = None) -> EvaluationResult:
        if predictions is not None:
            raise ValueError("a detector's evaluation makes its own predictions (AP needs "
                             "every scored instance)")
        return evaluate_detection(model, samples, out, split_spec, batch_size=batch_size,
                                  n_boot=n_boot, examples=overlays, checkpoint=checkpoint)
