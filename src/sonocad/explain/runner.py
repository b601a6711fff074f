"""`sonocad explain`: a heatmap over each image of where the model looked.

A classifier's heatmap is the Grad-CAM (or Grad-CAM++) map of its predicted class, computed on
the model input (letterboxed as in training) and mapped back onto the image; a segmentation
model's heatmap is its lesion probability. A multitask model (the default model) gets both:
its lesion probability, and the Grad-CAM of its class head's call on the encoder's last
features. A detector's heatmap is the score of the instances covering each pixel, and its
instances are drawn (boxes, outlines, class and score) in ``out/<stem>_detections.png``; Grad-CAM
on Mask R-CNN's box head is left out, since its pooled region features have no spatial map
over the image that the gradients could weigh. Outputs: ``out/<stem>_heatmap.png`` (``_2``,
``_3``, ... added when two inputs share a stem), the heatmap blended over the image at its own
size in predict's colours (`sonocad.pictures.heatmap_picture`: inferno, with a colour bar titled
with what it shows, e.g. "Grad-CAM of malignant (0.91)"), for a multitask model
``out/<stem>_class_heatmap.png``, and ``out/provenance.json`` (`sonocad.provenance`). Without
a checkpoint the bundled default model is explained. Every frame of a DICOM cine
loop or multi-page TIFF is explained, as `sonocad predict` predicts them:
``<stem>_frameNNN_heatmap.png`` (from 001).
Unreadable inputs are reported on stderr, one line each, skipped and listed in
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
from torch import nn
from tqdm import tqdm

from sonocad.checkpoint import Checkpoint, bundled_checkpoint
from sonocad.errors import InputError, SonocadError
from sonocad.explain.gradcam import METHODS, Method, grad_cam
from sonocad.inference.predictor import Predictor
from sonocad.io.atomic import save_png
from sonocad.io.images import numbered_frames
from sonocad.io.outputs import UniqueNames, claim_output_dir, output_stem
from sonocad.model_input import model_input, restore_size
from sonocad.pictures import heatmap_picture, overlay_picture
from sonocad.predictions import Prediction
from sonocad.progress import progress
from sonocad.provenance import predictor_record, write_provenance

LESION_PROBABILITY = "lesion_probability"  # the "method" of a segmentation model's heatmap
INSTANCE_SCORE = "instance_score"  # a detector's
_PICTURES = ("heatmap", "class_heatmap", "detections")  # the picture files of a result row
_METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++"}


@dataclass(frozen=True)
class Explanation:
    heat: np.ndarray  # float32 (H, W) in [0, 1] at the image's own size
    method: str  # "gradcam", "gradcam++" or LESION_PROBABILITY
    predicted_class: str | None = None  # classification
    probability: float | None = None  # of the predicted class

    @property
    def label(self) -> str:
        """What the heatmap shows, for its colour bar: 'Grad-CAM of malignant (0.91)',
        'lesion probability' or 'instance score'."""
        if self.method in _METHOD_NAMES:
            return (f"{_METHOD_NAMES[self.method]} of {self.predicted_class} "
                    f"({self.probability:.2f})")
        return self.method.replace("_", " ")


@dataclass(frozen=True)
class ExplainResult:
    out_dir: Path
    rows: list[dict[str, Any]]  # file, heatmap, method (+ predicted_class, probability)
    failures: list[InputError]

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def pictures(self) -> int:
        """How many picture files were written (an image may have two or three)."""
        return sum(key in row for row in self.rows for key in _PICTURES)


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
        if _classifier(self.predictor) and self.predictor.checkpoint is None:
            raise SonocadError("Grad-CAM needs the checkpoint's gradients; explain with the "
                               ".pt checkpoint, not its ONNX export")
        # The predictor runs its model under no_grad behind a back end; Grad-CAM gets its own.
        self.model = (self.predictor.checkpoint.build_model()
                      if _classifier(self.predictor) else None)
        self.class_model, self.class_layer = _class_head(self.predictor)

    def __call__(self, pixels: np.ndarray, prediction: Prediction | None = None) -> Explanation:
        """Explain one image (uint8/uint16, grey or RGB, any size); `prediction`, when the
        caller already has the predictor's output for it, saves running the model again."""
        if prediction is None:
            (prediction,) = self.predictor.predict([pixels])
        if prediction.instances is not None:
            best = prediction.instances[0].score if prediction.instances else None
            return Explanation(prediction.lesion_probability, INSTANCE_SCORE,
                               prediction.predicted_class, best)
        if self.model is None:
            return Explanation(prediction.lesion_probability, LESION_PROBABILITY)
        return self._grad_cam(self.model, pixels, prediction)


    def explain_class(self, pixels: np.ndarray, prediction: Prediction | None = None,
                      target: str | None = None) -> Explanation | None:
        """Grad-CAM of class `target` (default: the predicted class) for a classifier or a
        multitask model's class head; None for a model without one (or a multitask model
        loaded from ONNX)."""
        model, layer = ((self.model, None) if self.model is not None
                        else (self.class_model, self.class_layer))
        if model is None:
            return None
        if prediction is None:
            (prediction,) = self.predictor.predict([pixels])
        return self._grad_cam(model, pixels, prediction, layer, target)

    def _grad_cam(self, model: nn.Module, pixels: np.ndarray, prediction: Prediction,
                  layer: str | None = None, target: str | None = None) -> Explanation:
        label = target or prediction.predicted_class
        if label not in self.predictor.class_names:
            raise SonocadError(f"unknown class {label!r} (the model's classes: "
                               f"{', '.join(self.predictor.class_names)})")
        spec = self.predictor.transform_config
        cam = grad_cam(model, torch.from_numpy(model_input(pixels, spec))[None], layer=layer,
                       target_class=self.predictor.class_names.index(label), method=self.method)
        heat = restore_size(cam, pixels.shape[:2], spec)
        return Explanation(np.clip(heat, 0, 1), self.method, label,
                           prediction.class_probabilities[label])


class ClassLogits(nn.Module):
    """A multitask model seen as a classifier, for Grad-CAM: its class logits alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["class_logits"]


def grad_cam_explainer(predictor: Predictor) -> Explainer | None:
    """The explainer of a classifier's heatmap, Grad-CAM, which needs the torch model (not an
    ONNX file); None for other models (their heatmap is their own map)."""
    return (Explainer(predictor) if _classifier(predictor) and predictor.checkpoint is not None
            else None)


def _classifier(predictor: Predictor) -> bool:
    """A model whose one output is its class scores: Grad-CAM is its heatmap."""
    return predictor.task.class_scores and not predictor.task.lesion_map


def _class_head(predictor: Predictor) -> tuple[nn.Module | None, str | None]:
    """(the class-logits model, its Grad-CAM layer) of a multitask torch checkpoint."""
    if _classifier(predictor) or not predictor.task.class_scores or predictor.checkpoint is None:
        return None, None
    model = predictor.checkpoint.build_model()
    layer = getattr(model, "class_cam_layer", None)
    return ClassLogits(model), (f"model.{layer}" if layer else None)


def explain(checkpoint_path: str | Path | None, inputs: Sequence[str | Path], out: str | Path,
            *, method: Method = "gradcam", overwrite: bool = False) -> ExplainResult:
    """Write ``out/<stem>_heatmap.png`` for every image file in `inputs`, and
    ``out/provenance.json``; `checkpoint_path` None explains the bundled default model (its
    checkpoint: Grad-CAM needs torch's gradients). `overwrite` replaces an earlier explain
    output in `out`."""
    out = Path(out)
    given = [] if checkpoint_path is None else [checkpoint_path]
    explainer = Explainer(Predictor(bundled_checkpoint()) if checkpoint_path is None
                          else checkpoint_path, method=method)
    claim_output_dir(out, "explain", inputs=[*given, *inputs], overwrite=overwrite)
    write_provenance(out, [predictor_record(explainer.predictor, checkpoint_path)],
                     explainer.predictor.backend)
    rows: list[dict[str, Any]] = []
    failures: list[InputError] = []
    names = UniqueNames()
    for path in progress(inputs, "explaining", unit="files"):
        try:
            for frame, image in numbered_frames(path):  # every frame, as predict does
                stem = output_stem(Path(path).name)
                stem = stem if frame is None else f"{stem}_frame{frame:03d}"
                rows.append(_explain_one(explainer, image.pixels, out, names.claim(stem),
                                         {"file": str(path), "frame": frame}))
        except InputError as exc:
            tqdm.write(f"sonocad: skipped {exc}", file=sys.stderr)  # keeps the bar intact
            failures.append(exc)
    return ExplainResult(out, rows, failures)


def _explain_one(explainer: Explainer, pixels: np.ndarray, out: Path, name: str,
                 row: dict[str, Any]) -> dict[str, Any]:
    """Write one frame's heatmap(s), in predict's colours with a colour bar naming what they
    show; its row of the result."""
    (prediction,) = explainer.predictor.predict([pixels])
    explanation = explainer(pixels, prediction)
    row.update(heatmap=str(out / f"{name}_heatmap.png"), method=explanation.method)
    _save_heatmap(Path(row["heatmap"]), pixels, explanation)
    if prediction.instances is not None:
        row["detections"] = str(out / f"{name}_detections.png")
        save_png(Path(row["detections"]), overlay_picture(pixels, prediction, None))
    called = explanation if explanation.predicted_class else None
    if explainer.model is None and explainer.class_model is not None:
        called = explainer.explain_class(pixels, prediction)
        row.update(class_heatmap=str(out / f"{name}_class_heatmap.png"),
                   class_method=called.method)
        _save_heatmap(Path(row["class_heatmap"]), pixels, called)
    if called is not None:
        row.update(predicted_class=called.predicted_class, probability=called.probability)
    return row


def _save_heatmap(path: Path, pixels: np.ndarray, explanation: Explanation) -> None:
    save_png(path, heatmap_picture(pixels, explanation.heat, explanation.label))
