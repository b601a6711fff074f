"""Detection inference: a Mask R-CNN checkpoint in, lesion instances at each image's size out.

`DetectionPredictor` returns every scored instance (evaluation needs the low scores for AP);
`Predictor` (predict, serve, explain) turns them into `Instance` lists and a lesion map with
`detection_outputs`. Preprocessing is rebuilt from the checkpoint exactly as for the other
tasks, and boxes and masks are mapped from the model input back onto the original image
(letterbox bars removed, rescaled).

ONNX: torchvision's Mask R-CNN goes through the TorchScript exporter, but its graph resizes
inside and returns data-dependent numbers of instances, and sonocad has no check that its
output equals torch's; detectors therefore run on the torch back end only (docs/detection.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sonocad.engine.checkpoint import Checkpoint, load_checkpoint
from sonocad.errors import SonocadError
from sonocad.evaluation.detection import MASK_THRESHOLD, ImageInstances
from sonocad.evaluation.measure import lesion_measurements
from sonocad.transforms import TransformConfig, fit_geometry, restore_size, to_model_input

INSTANCE_THRESHOLD = 0.5  # score from which an instance counts as found (tables, pictures)
NO_LESION = "normal"  # an image's call when no instance reaches INSTANCE_THRESHOLD


@dataclass(frozen=True)
class Instance:
    """One detected lesion in the image's own pixels."""

    label: str  # benign / malignant
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    mask: np.ndarray  # bool (H, W)


def detection_outputs(found: ImageInstances, class_names: Sequence[str]
                      ) -> tuple[list[Instance], np.ndarray, dict[str, float]]:
    """(the instances scoring at least `INSTANCE_THRESHOLD`, best first; the lesion map: per
    pixel the highest score of an instance covering it, so that ``map > 0.5`` is the union of
    the found instances' masks; per class the top score of any instance, 0 without one: with
    "malignant" the image-level malignancy score of QIMS 2023)."""
    scores = np.asarray(found.scores, dtype=np.float32)
    masks = found.masks
    shape = masks.shape[1:]
    lesion_map = (np.max(masks * scores[:, None, None], axis=0) if len(scores)
                  else np.zeros(shape, dtype=np.float32)).astype(np.float32)
    top = {name: float(scores[found.labels == index].max(initial=0.0))
           for index, name in enumerate(class_names) if index > 0}
    order = [i for i in np.argsort(-scores, kind="stable") if scores[i] >= INSTANCE_THRESHOLD]
    instances = [Instance(class_names[int(found.labels[i])], float(scores[i]),
                          tuple(float(v) for v in found.boxes[i]), masks[i]) for i in order]
    return instances, lesion_map, top


def instance_records(instances: Sequence[Instance], spacing_mm: tuple[float, float] | None
                     ) -> list[dict[str, object]]:
    """JSON-ready instances: class, score, box [x0, y0, x1, y1] and the sizes of its mask
    (area and longest diameter in px, and in mm where the spacing is known, else None)."""
    records = []
    for instance in instances:
        sizes = lesion_measurements(instance.mask, spacing_mm)
        records.append({"label": instance.label, "score": round(instance.score, 4),
                        "box": [round(v, 1) for v in instance.box],
                        **{key: None if math.isnan(value) else round(value, 2)
                           for key, value in sizes.items()}})
    return records


def detection_fields(instances: Sequence[Instance], top_scores: dict[str, float],
                     spacing_mm: tuple[float, float] | None) -> dict[str, object]:
    """What predict's table and the viewer report of a detector's image: the top score per
    class (``malignant_score`` is QIMS 2023's image-level score), ``n_instances`` and the
    found ``instances`` (`instance_records`)."""
    records = instance_records(instances, spacing_mm)
    return {**{f"{name}_score": score for name, score in top_scores.items()},
            "n_instances": len(records), "instances": records}


class DetectionPredictor:
    """`predict(images)` -> one `ImageInstances` per image, in the image's own pixels.

    Returns every instance the model keeps (torchvision's box_score_thresh, 0.05 by default),
    since AP needs the low scores too; callers choose their own score cut-off.
    """

    def __init__(self, source: Checkpoint | str | Path, device: str = "cpu") -> None:
        self.checkpoint = source if isinstance(source, Checkpoint) else load_checkpoint(source)
        if self.checkpoint.task != "detection":
            raise SonocadError(f"expected a detection checkpoint, got a "
                               f"{self.checkpoint.task} model")
        self.meta = self.checkpoint.meta
        self.class_names: list[str] = self.checkpoint.class_names
        self.transform_config = TransformConfig.from_dict(self.meta["transform"])
        self.device = torch.device(device)
        self.model: nn.Module = self.checkpoint.build_model().to(self.device)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray]) -> list[ImageInstances]:
        """Detect lesions in a batch of images (uint8/uint16, grey or RGB, any sizes)."""
        if not images:
            return []
        batch = [to_model_input(p, self.transform_config).to(self.device) for p in images]
        outputs = self.model(batch)
        return [self._restore(output, image.shape[:2]) for output, image in zip(outputs, images)]

    def _restore(self, output: dict[str, Tensor], shape: tuple[int, int]) -> ImageInstances:
        """Boxes and masks from the model input onto the original image of `shape` (H, W)."""
        cfg = self.transform_config
        (h, w), (top, left) = fit_geometry(shape, cfg.size, cfg.keep_aspect)
        boxes = output["boxes"].float().cpu().numpy()
        scale = np.array([shape[1] / w, shape[0] / h] * 2, dtype=np.float32)
        boxes = (boxes - np.array([left, top] * 2, dtype=np.float32)) * scale
        boxes = np.clip(boxes, 0, np.array([shape[1], shape[0]] * 2, dtype=np.float32))
        # Resize probabilities, then cut: the 0.5 contour stays where the model put it.
        probabilities = output["masks"][:, 0].float().cpu()
        masks = ((restore_size(probabilities, shape, cfg) > MASK_THRESHOLD).numpy()
                 if len(probabilities) else np.zeros((0, *shape), dtype=bool))
        return ImageInstances(boxes, output["labels"].cpu().numpy(), masks,
                              output["scores"].float().cpu().numpy())
