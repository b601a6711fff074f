"""The Predictor: a model in, per-image lesion probability maps and class probabilities out.

It rebuilds preprocessing from the model's meta, so inference sees exactly what training saw.
Probability maps come back at each image's own size.

A detector (Mask R-CNN) gives its instances instead of class probabilities, and a lesion map
made from them (`sonocad.inference.detection.detection_outputs`); it runs on torch only.

Two back ends share every step but the model call, which sits behind `Runner`:
- ``torch`` runs the checkpoint's module (`TorchRunner`);
- ``onnx`` runs one ONNX Runtime session (`sonocad.inference.onnx_backend.OnnxRunner`) on an
  exported ``.onnx`` file, or on a checkpoint exported in memory when the Predictor is built
  (a second or so; export once with `sonocad export` to skip that on every start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from sonocad.engine.checkpoint import Checkpoint, load_checkpoint
from sonocad.errors import InputError, SonocadError
from sonocad.evaluation.detection import ImageInstances
from sonocad.inference.decision import Decision, DecisionRule, decide
from sonocad.inference.detection import (NO_LESION, DetectionPredictor, Instance,
                                         detection_outputs)
from sonocad.transforms import TransformConfig, restore_size, to_model_input

THRESHOLD = 0.5
BACKENDS = ("torch", "onnx")
INFERENCE_TASKS = ("segmentation", "classification", "multitask", "detection")
ONNX_TASKS = ("segmentation", "classification", "multitask")
LESION_TASKS = ("segmentation", "multitask", "detection")  # tasks with a lesion map
CLASS_TASKS = ("classification", "multitask")  # tasks with class probabilities
DEFAULT_MODEL = ("weights", "default.pt")  # inside the sonocad package


@dataclass
class Prediction:
    # float32 (H, W) at the image's size (LESION_TASKS); a detector's is its instance scores
    lesion_probability: np.ndarray | None
    class_probabilities: dict[str, float] | None  # CLASS_TASKS
    decision: Decision | None = None  # multitask models whose meta holds a decision rule
    instances: list[Instance] | None = None  # a detector's found lesions, best first
    top_scores: dict[str, float] | None = None  # a detector's top score per class (any score)

    @property
    def mask(self) -> np.ndarray | None:
        if self.lesion_probability is None:
            return None
        return self.lesion_probability > THRESHOLD

    @property
    def predicted_class(self) -> str | None:
        """The class head's argmax (the raw call); a detector's: its best instance's class, or
        "normal" when it found none."""
        if self.instances is not None:
            return self.instances[0].label if self.instances else NO_LESION
        if not self.class_probabilities:
            return None
        return max(self.class_probabilities, key=self.class_probabilities.__getitem__)

    @property
    def final_class(self) -> str | None:
        """The call reconciled with the lesion outline where the model has a rule, else the
        argmax."""
        return self.decision.final_class if self.decision else self.predicted_class


class Runner(Protocol):
    """The model call: a float32 batch (N, 3, H, W) of preprocessed images in, a tuple of
    float32 CPU logits out (see `LogitsOnly`)."""

    def __call__(self, batch: Tensor) -> tuple[Tensor, ...]: ...


def output_names(task: str) -> tuple[str, ...]:
    """What `LogitsOnly` returns for `task`, in order (also the ONNX output names)."""
    return {"segmentation": ("lesion_logits",), "classification": ("class_logits",),
            "multitask": ("lesion_logits", "class_logits")}[task]


class LogitsOnly(nn.Module):
    """`model` returning only logits, as a tuple named by `output_names`: the lesion logits
    (N, 1, H, W) (the "aux" maps only serve deep supervision in training) and/or the class
    logits (N, K). ONNX export traces this too."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        outputs = self.model(x)
        if self.task == "classification":
            return (outputs,)
        if self.task == "segmentation":
            return (outputs["out"],)
        return outputs["out"], outputs["class_logits"]


class TorchRunner:
    def __init__(self, model: nn.Module, task: str, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = LogitsOnly(model, task).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.float().cpu() for t in self.module(batch.to(self.device)))


def check_task(task: str, backend: str = "torch") -> None:
    if task not in INFERENCE_TASKS:
        raise SonocadError(f"inference does not handle {task} models "
                           f"(only {', '.join(INFERENCE_TASKS)})")
    if backend == "onnx" and task not in ONNX_TASKS:
        raise SonocadError(f"{task} models run on the torch back end only: ONNX export of "
                           "torchvision's Mask R-CNN is not verified (see docs/detection.md)")


def is_onnx_file(source: Checkpoint | str | Path) -> bool:
    return not isinstance(source, Checkpoint) and Path(source).suffix.lower() == ".onnx"


class Predictor:
    """`source`: a checkpoint (path or loaded); with ``backend="onnx"`` also a ``.onnx`` file
    from `sonocad export`. `checkpoint` is None when the model came from an ONNX file; `meta`
    (the checkpoint's meta, also stored in exported ONNX files) is always there."""

    def __init__(self, source: Checkpoint | str | Path, *, backend: str = "torch",
                 device: str = "cpu") -> None:
        if backend not in BACKENDS:
            raise SonocadError(f"unknown back end {backend!r} (choose {' or '.join(BACKENDS)})")
        if backend == "onnx" and device != "cpu":
            raise SonocadError("the onnx back end runs on the CPU only; use device 'cpu'")
        self.backend = backend
        self.checkpoint, self.runner, self.meta = _open(source, backend, device)
        self.task: str = self.meta["task"]
        self.class_names: list[str] = list(self.meta["class_names"])
        self.transform_config = TransformConfig.from_dict(self.meta["transform"])
        rule = self.meta.get("decision")
        self.rule = (DecisionRule.from_dict(rule) if rule and self.task == "multitask"
                     else None)

    @classmethod
    def default(cls, *, backend: str = "torch") -> Predictor:
        """The bundled default model (``sonocad/weights/default.pt``)."""
        resource = files("sonocad").joinpath(*DEFAULT_MODEL)
        if not resource.is_file():
            raise SonocadError("no bundled default model (sonocad/weights/default.pt); "
                               "pass a checkpoint")
        with as_file(resource) as path:
            return cls(path, backend=backend)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict a batch of images (uint8/uint16 arrays, grey or RGB, any sizes)."""
        if not images:
            return []
        if isinstance(self.runner, DetectionPredictor):
            return [_detected(found, self.class_names) for found in self.runner.predict(images)]
        batch = torch.stack([to_model_input(p, self.transform_config) for p in images])
        outputs = self.runner(batch)
        lesion = outputs[0] if self.task in LESION_TASKS else None
        classes = (torch.softmax(outputs[-1], dim=1).numpy() if self.task in CLASS_TASKS
                   else None)
        predictions = [Prediction(
            None if lesion is None else self._probability_map(lesion[i], image.shape[:2]),
            None if classes is None else dict(zip(self.class_names, map(float, classes[i]))))
            for i, image in enumerate(images)]
        if self.rule is not None:
            for prediction in predictions:
                prediction.decision = decide(self.rule, prediction.class_probabilities,
                                             prediction.lesion_probability)
        return predictions

    def _probability_map(self, logits: Tensor, shape: tuple[int, int]) -> np.ndarray:
        # Resize logits, not probabilities: the 0.5 contour stays where the model put it.
        resized = restore_size(logits, shape, self.transform_config)
        # float32 already (Runner's contract): the array shares the tensor's memory, no copy
        return torch.sigmoid(resized)[0].numpy()


def _detected(found: ImageInstances, class_names: list[str]) -> Prediction:
    instances, lesion_map, top_scores = detection_outputs(found, class_names)
    return Prediction(lesion_map, None, instances=instances, top_scores=top_scores)


def _open(source: Checkpoint | str | Path, backend: str, device: str
          ) -> tuple[Checkpoint | None, Runner | DetectionPredictor, dict[str, Any]]:
    """(checkpoint or None for an ONNX file, runner, meta)."""
    if backend == "onnx":
        # Imported on use: the ONNX back end builds on this module (LogitsOnly, check_task).
        from sonocad.inference.onnx_backend import OnnxRunner
    if is_onnx_file(source):
        if backend != "onnx":
            raise InputError(source, "an ONNX model runs on the onnx back end, not torch")
        runner = OnnxRunner.from_file(source)
        check_task(runner.meta["task"], backend)
        return None, runner, runner.meta
    checkpoint = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    check_task(checkpoint.task, backend)
    if checkpoint.task == "detection":
        return checkpoint, DetectionPredictor(checkpoint, device), checkpoint.meta
    if backend == "torch":
        runner = TorchRunner(checkpoint.build_model(), checkpoint.task, device)
    else:
        runner = OnnxRunner.from_checkpoint(checkpoint)
    return checkpoint, runner, checkpoint.meta
