"""The Predictor: a checkpoint in, per-image lesion probability maps and class probabilities out.

It rebuilds preprocessing from the checkpoint, so inference sees exactly what training saw.
Probability maps come back at each image's own size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sonocad.engine.checkpoint import Checkpoint, load_checkpoint
from sonocad.errors import SonocadError
from sonocad.transforms import TransformConfig, restore_size, to_model_input

THRESHOLD = 0.5


@dataclass
class Prediction:
    lesion_probability: np.ndarray | None  # float32 (H, W) at the image's size; segmentation
    class_probabilities: dict[str, float] | None  # classification

    @property
    def mask(self) -> np.ndarray | None:
        if self.lesion_probability is None:
            return None
        return self.lesion_probability > THRESHOLD

    @property
    def predicted_class(self) -> str | None:
        if not self.class_probabilities:
            return None
        return max(self.class_probabilities, key=self.class_probabilities.__getitem__)


class Predictor:
    def __init__(self, checkpoint: Checkpoint | str | Path, *, device: str = "cpu") -> None:
        self.checkpoint = (checkpoint if isinstance(checkpoint, Checkpoint)
                           else load_checkpoint(checkpoint))
        self.task = self.checkpoint.task
        if self.task not in ("segmentation", "classification"):
            raise SonocadError(f"the predictor does not handle {self.task} checkpoints yet")
        self.class_names = self.checkpoint.class_names
        self.transform_config = TransformConfig.from_dict(self.checkpoint.meta["transform"])
        self.device = torch.device(device)
        self.model = self.checkpoint.build_model().to(self.device)

    @torch.no_grad()
    def predict(self, images: list[np.ndarray]) -> list[Prediction]:
        """Predict a batch of images (uint8/uint16 arrays, grey or RGB, any sizes)."""
        if not images:
            return []
        batch = torch.stack([to_model_input(p, self.transform_config) for p in images])
        outputs = self.model(batch.to(self.device))
        if self.task == "classification":
            probabilities = torch.softmax(outputs.float(), dim=1).cpu().numpy()
            return [Prediction(None, dict(zip(self.class_names, map(float, row))))
                    for row in probabilities]
        logits = outputs["out"].float()
        return [Prediction(self._probability_map(logits[i], image.shape[:2]), None)
                for i, image in enumerate(images)]

    def _probability_map(self, logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        # Resize logits, not probabilities: the 0.5 contour stays where the model put it.
        resized = restore_size(logits, shape, self.transform_config)
        return torch.sigmoid(resized)[0].cpu().numpy().astype(np.float32)
