"""`sonocad explain`: a heatmap over each image of where the model looked.

A classifier's heatmap is the Grad-CAM (or Grad-CAM++) map of its predicted class, computed on
the model input (letterboxed as in training) and mapped back onto the image; a segmentation
model's heatmap is its lesion probability. Outputs: ``out/<stem>_heatmap.png`` (``_2``,
``_3``, ... added when two inputs share a stem), the heatmap blended over the image at its own
size. Unreadable inputs are reported on stderr, one line each, skipped and listed in
`ExplainResult.failures`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sonocad.engine.checkpoint import Checkpoint
from sonocad.errors import InputError, SonocadError
from sonocad.explain.gradcam import METHODS, Method, grad_cam
from sonocad.inference.predictor import Prediction, Predictor
from sonocad.io.atomic import save_png
from sonocad.io.images import read_image
from sonocad.io.outputs import claim_output_dir
from sonocad.progress import progress
from sonocad.transforms import restore_size, to_model_input
from sonocad.visual import heatmap

LESION_PROBABILITY = "lesion_probability"  # the "method" of a segmentation model's heatmap


@dataclass(frozen=True)
class Explanation:
    heat: np.ndarray  # float32 (H, W) in [0, 1] at the image's own size
    method: str  # "gradcam", "gradcam++" or LESION_PROBABILITY
    predicted_class: str | None = None  # classification
    probability: float | None = None  # of the predicted class


@dataclass(frozen=True)
class ExplainResult:
    out_dir: Path
    rows: list[dict[str, Any]]  # file, heatmap, method (+ predicted_class, probability)
    failures: list[InputError]

    @property
    def ok(self) -> bool:
        return not self.failures


class Explainer:
    """One checkpoint, ready to explain images one at a time (`explain`, the web viewer).

    `method` applies to classifiers; a segmentation model is explained by its own
    lesion probability.
    """

    def __init__(self, source: Predictor | Checkpoint | str | Path, *,
                 method: Method = "gradcam") -> None:
        if method not in METHODS:
            raise SonocadError(f"unknown explanation method {method!r} "
                               f"(choose from {', '.join(METHODS)})")
        self.method = method
        self.predictor = source if isinstance(source, Predictor) else Predictor(source)
        if self.predictor.task == "classification" and self.predictor.checkpoint is None:
            raise SonocadError("Grad-CAM needs the checkpoint's gradients; explain with the "
                               ".pt checkpoint, not its ONNX export")
        # The predictor runs its model under no_grad behind a back end; Grad-CAM gets its own.
        self.model = (self.predictor.checkpoint.build_model()
                      if self.predictor.task == "classification" else None)

    def __call__(self, pixels: np.ndarray, prediction: Prediction | None = None) -> Explanation:
        """Explain one image (uint8/uint16, grey or RGB, any size); `prediction`, when the
        caller already has the predictor's output for it, saves running the model again."""
        if prediction is None:
            (prediction,) = self.predictor.predict([pixels])
        if self.model is None:
            return Explanation(prediction.lesion_probability, LESION_PROBABILITY)
        label = prediction.predicted_class
        config = self.predictor.transform_config
        cam = grad_cam(self.model, to_model_input(pixels, config)[None],
                       target_class=self.predictor.class_names.index(label), method=self.method)
        heat = restore_size(torch.from_numpy(cam)[None], pixels.shape[:2], config)[0]
        return Explanation(heat.clamp(0, 1).numpy(), self.method, label,
                           prediction.class_probabilities[label])


def explain(checkpoint_path: str | Path, inputs: Sequence[str | Path], out: str | Path, *,
            method: Method = "gradcam", overwrite: bool = False) -> ExplainResult:
    """Write ``out/<stem>_heatmap.png`` for every image file in `inputs`; `overwrite` replaces
    an earlier explain output in `out`."""
    out = Path(out)
    explainer = Explainer(checkpoint_path, method=method)
    claim_output_dir(out, "explain", inputs=[checkpoint_path, *inputs], overwrite=overwrite)
    rows: list[dict[str, Any]] = []
    failures: list[InputError] = []
    taken: set[str] = set()
    for path in progress(inputs, "explaining"):
        try:
            image = read_image(path)
        except InputError as exc:
            tqdm.write(f"sonocad: skipped {exc}", file=sys.stderr)  # keeps the bar intact
            failures.append(exc)
            continue
        explanation = explainer(image.pixels)
        target = out / f"{_unique(Path(path).stem, taken)}_heatmap.png"
        save_png(target, heatmap(image.pixels, explanation.heat))
        row = {"file": str(path), "heatmap": str(target), "method": explanation.method}
        if explanation.predicted_class is not None:
            row.update(predicted_class=explanation.predicted_class,
                       probability=explanation.probability)
        rows.append(row)
    return ExplainResult(out, rows, failures)


def _unique(stem: str, taken: set[str]) -> str:
    """`stem`, or `stem_2`, `stem_3`, ... if taken (case-insensitively: macOS, Windows)."""
    name, number = stem, 1
    while name.casefold() in taken:
        number += 1
        name = f"{stem}_{number}"
    taken.add(name.casefold())
    return name
