"""Outlines from boxes a person drew: LiteMedSAM (`sonocad.models.litemedsam`) on any image.

Preprocessing is LiteMedSAM's own, as it was trained: the longest side resized to 256 (OpenCV's
area interpolation, sizes rounded half up), min-max scaled to [0, 1], padded bottom and right to
256 x 256 with zeros, grey repeated to three channels; a box is scaled by the same factor. The
decoder's 256 x 256 answer is turned into probabilities, cropped to the resized image and
resized back to the image's size (bilinear). The encoder runs once per image (`embed`); each box
then costs only the prompt encoder and mask decoder (`probabilities`).

A box is one lesion: `box_lesion_map` keeps, of each box's outline, the connected part that
holds the most probability (a box's stray specks are not lesions of their own) and joins the
boxes into one lesion probability map, which is measured like any model's
(`sonocad.measure.find_lesions`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from scipy import ndimage

from sonocad.measure import THRESHOLD
from sonocad.models.litemedsam import INPUT_SIZE, LiteMedSAM, load_litemedsam

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels, x1/y1 exclusive


@dataclass(frozen=True)
class Embedding:
    """One image through the encoder, and where it lies in the 256 x 256 frame."""

    features: torch.Tensor  # (1, 256, 64, 64)
    shape: tuple[int, int]  # the image's (height, width)
    scale: float  # 256 / the image's longest side
    resized: tuple[int, int]  # (height, width) of the image inside the frame


class BoxOutliner:
    """LiteMedSAM with its preprocessing: `embed` an image once, outline any boxes on it."""

    def __init__(self, network: LiteMedSAM | None = None) -> None:
        self.network = load_litemedsam() if network is None else network

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> Embedding:
        frame, scale, resized = model_input(pixels)
        features = self.network.encode(torch.from_numpy(frame)[None])
        return Embedding(features, pixels.shape[:2], scale, resized)

    @torch.inference_mode()
    def probabilities(self, embedding: Embedding, boxes: Sequence[Box]) -> np.ndarray:
        """(N, H, W) float32 lesion probability of each box's outline at the image's size."""
        height, width = embedding.shape
        if not boxes:
            return np.zeros((0, height, width), np.float32)
        scaled = torch.tensor(boxes, dtype=torch.float32) * embedding.scale
        logits = self.network.decode(embedding.features, scaled)
        rows, cols = embedding.resized
        probability = torch.sigmoid(logits)[:, :, :rows, :cols]
        probability = torch.nn.functional.interpolate(probability, size=(height, width),
                                                      mode="bilinear", align_corners=False)
        return probability[:, 0].numpy()


def model_input(pixels: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(3, 256, 256) float32 frame, the scale applied, and the resized (rows, cols)."""
    height, width = pixels.shape[:2]
    scale = INPUT_SIZE / max(height, width)
    rows, cols = int(height * scale + 0.5), int(width * scale + 0.5)
    resized = cv2.resize(pixels, (cols, rows), interpolation=cv2.INTER_AREA).astype(np.float32)
    low, high = float(resized.min()), float(resized.max())
    resized = (resized - low) / max(high - low, 1e-8)
    if resized.ndim == 2:
        resized = np.repeat(resized[:, :, None], 3, axis=2)
    frame = np.zeros((INPUT_SIZE, INPUT_SIZE, 3), np.float32)
    frame[:rows, :cols] = resized
    return np.ascontiguousarray(frame.transpose(2, 0, 1)), scale, (rows, cols)


def box_lesion_map(probabilities: np.ndarray) -> np.ndarray:
    """One lesion probability map (H, W) from each box's (N, H, W): per box, only the connected
    outline that holds the most probability; where boxes overlap, the higher probability."""
    joined = np.zeros(probabilities.shape[1:], np.float32)
    for probability in probabilities:
        labels, count = ndimage.label(probability > THRESHOLD, structure=np.ones((3, 3), bool))
        if count == 0:
            continue
        mass = ndimage.sum(probability, labels, index=np.arange(1, count + 1))
        kept = labels == 1 + int(np.argmax(mass))
        np.maximum(joined, np.where(kept, probability, 0.0), out=joined)
    return joined
