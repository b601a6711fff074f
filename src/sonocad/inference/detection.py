"""Detection inference: a Mask R-CNN checkpoint in, lesion instances at each image's size out.

`DetectionPredictor` returns every scored instance (evaluation needs the low scores for AP);
`Predictor` (predict, serve, explain) turns them into `Instance` lists and a lesion map with
`sonocad.tasks.detection_outputs`. Preprocessing is rebuilt from the checkpoint exactly as for
the other tasks, and boxes and masks are mapped from the model input back onto the original image
(letterbox bars removed, rescaled).

ONNX: torchvision's Mask R-CNN goes through the TorchScript exporter, but its graph resizes
inside and returns data-dependent numbers of instances, and sonocad has no check that its
output equals torch's; detectors therefore run on the torch back end only (docs/detection.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from sonocad.checkpoint import Checkpoint, load_checkpoint
from sonocad.errors import SonocadError
from sonocad.evaluation.detection import MASK_THRESHOLD, ImageInstances
from sonocad.tasks import get_task
from sonocad.transforms import TransformConfig, fit_geometry, restore_size, to_model_input


class DetectionPredictor:
    """`predict(images)` -> one `ImageInstances` per image, in the image's own pixels.

    Returns every instance the model keeps (torchvision's box_score_thresh, 0.05 by default),
    since AP needs the low scores too; callers choose their own score cut-off.
    """

    def __init__(self, source: Checkpoint | str | Path, device: str = "cpu") -> None:
        self.checkpoint = source if isinstance(source, Checkpoint) else load_checkpoint(source)
        if not get_task(self.checkpoint.task).detector:
            raise SonocadError(f"expected a detection checkpoint, got a "
                               f"{self.checkpoint.task} model")
        self.info = self.checkpoint.info
        self.class_names: list[str] = self.checkpoint.class_names
        self.transform_config = TransformConfig.from_dict(self.info.transform)
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
