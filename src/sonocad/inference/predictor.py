"""The Predictor: a model in, per-image lesion probability maps and class probabilities out.

It rebuilds preprocessing from the model's meta, so inference sees exactly what training saw.
Probability maps come back at each image's own size.

A detector (Mask R-CNN) gives its instances instead of class probabilities, and a lesion map
made from them (`sonocad.tasks.detection_outputs`); it runs on torch only.

Two back ends share every step but the model call, which sits behind `Runner` (numpy in,
numpy out); preprocessing and post-processing are numpy and Pillow (`sonocad.model_input`):
- ``torch`` runs the checkpoint's module (`sonocad.inference.logits.TorchRunner`);
- ``onnx`` runs one ONNX Runtime session (`sonocad.inference.onnx_backend.OnnxRunner`) on an
  exported ``.onnx`` file, or on a checkpoint exported in memory when the Predictor is built
  (a second or so; export once with `sonocad export` to skip that on every start).
An ONNX file needs no torch at all: this module imports it only for checkpoints, so
`sonocad predict` with the bundled model's ONNX twin (``sonocad/weights/default.onnx``, the
default where ONNX Runtime is installed) starts in a fraction of a second.

A checkpoint whose meta says ``tta: hflip`` is run on each image and its mirror image, logits
averaged (`FlipAveraged`): twice the model time for a steadier call; the back ends are unchanged.

A model never makes a call out of NaN: a checkpoint whose weights are not all finite (a damaged
file, a diverged training run) is refused when the Predictor is built, naming the file; an image
whose model output is not finite (a model whose weights overflow on some inputs, or an ONNX
file with damaged weights) gets a `NonFiniteOutput` instead of a prediction (`predict_each`),
and `predict` raises it.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from scipy.special import expit

from sonocad.errors import InputError, SonocadError
from sonocad.inference.decision import DecisionRule, decide
from sonocad.io.pixels import Image
from sonocad.meta import CheckpointMeta
from sonocad.model_input import InputSpec, model_input, restore_size
from sonocad.predictions import Prediction

if TYPE_CHECKING:  # at run time only for checkpoints: they need torch
    from sonocad.checkpoint import Checkpoint

BACKENDS = ("torch", "onnx")
BUNDLED_ONNX = ("weights", "default.onnx")  # the bundled model's ONNX twin, in the package
# What the models of the built-in tasks output, (lesion map, class scores), known here without
# importing `sonocad.tasks` (torch); tests/test_model_input.py keeps the two in step.
_TASK_OUTPUTS = {"segmentation": (True, False), "classification": (False, True),
                 "multitask": (True, True)}


class Runner(Protocol):
    """The model call: a float32 batch (N, 3, H, W) of preprocessed images in, a tuple of
    float32 logits out: the lesion logits (N, 1, H, W) and/or the class logits (N, K)."""

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]: ...


@dataclass(frozen=True)
class TaskOutputs:
    """What a task's model gives the Predictor."""

    name: str
    lesion_map: bool
    class_scores: bool


class NonFiniteOutput(SonocadError):
    """The model's output for an image holds NaN or infinity: no prediction can be made of it."""

    def __init__(self, kind: str) -> None:
        super().__init__(f"the model's output is not finite ({kind}), so no call is made; a "
                         "model that does this on every image has damaged weights")


def is_onnx_file(source: Checkpoint | str | Path) -> bool:
    return isinstance(source, (str, Path)) and Path(source).suffix.lower() == ".onnx"


def natural_backend(source: Checkpoint | str | Path) -> str:
    """The back end a model runs on unless told otherwise: onnx for a ``.onnx`` file."""
    return "onnx" if is_onnx_file(source) else "torch"


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
        self.checkpoint, self.runner, self.info, self.task, self._detector = _open(
            source, backend, device)
        self.class_names: list[str] = list(self.info.class_names)
        self.transform_config = InputSpec.from_dict(self.info.transform)
        rule = self.info.decision
        self.rule = (DecisionRule.from_dict(rule)
                     if rule and self.task.lesion_map and self.task.class_scores else None)

    @classmethod
    def default(cls, *, backend: str | None = None) -> Predictor:
        """The bundled default model: its ONNX twin on ONNX Runtime where that is installed
        (or `backend` says "onnx"), else the checkpoint (``sonocad/weights/default.pt``) on
        torch."""
        if backend is None:
            backend = "onnx" if importlib.util.find_spec("onnxruntime") else "torch"
        if backend == "onnx":
            resource = files("sonocad").joinpath(*BUNDLED_ONNX)
            if resource.is_file():
                with as_file(resource) as path:
                    return cls(path, backend="onnx")
        from sonocad.checkpoint import bundled_checkpoint  # torch: on use

        return cls(bundled_checkpoint(), backend=backend)

    def predict(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict a batch of images (uint8/uint16 arrays, grey or RGB, any sizes); raises
        `NonFiniteOutput` if the model's output for any of them is not finite."""
        predictions = []
        for prediction in self.predict_each(images):
            if isinstance(prediction, NonFiniteOutput):
                raise prediction
            predictions.append(prediction)
        return predictions

    def predict_each(self, images: Sequence[np.ndarray]
                     ) -> list[Prediction | NonFiniteOutput]:
        """As `predict`, but an image whose model output is not finite gets its
        `NonFiniteOutput` in its place, so that the rest of a batch carries on."""
        if not images:
            return []
        if self._detector:
            from sonocad.tasks.detection_outputs import detected

            return [detected(found, self.class_names) for found in self.runner.predict(images)]
        batch = np.stack([model_input(p, self.transform_config) for p in images])
        outputs = self.runner(batch)
        lesion = outputs[0] if self.task.lesion_map else None
        classes = _softmax(outputs[-1]) if self.task.class_scores else None
        return [self._prediction(None if lesion is None else lesion[i, 0], image.shape[:2],
                                 None if classes is None else classes[i])
                if problem is None else problem
                for i, (image, problem) in enumerate(zip(images, _non_finite_images(outputs)))]

    def predict_images(self, images: Sequence[Image]) -> list[Prediction | NonFiniteOutput]:
        """As `predict_each`, for images that may name calibrated regions (a DICOM dual view):
        a lesion map model predicts each region's crop on its own, and the image's lesion map
        is theirs pasted in place, zero outside every region; its class probabilities and
        decision are those of the region that looks least normal (a lesion in one view is a
        lesion). A detector, and an image without regions, is predicted whole."""
        regional = self.task.lesion_map and not self._detector
        crops, owners = [], []
        for index, image in enumerate(images):
            boxes = [region.box for region in image.regions] if regional else []
            crops += [image.pixels[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes] or [image.pixels]
            owners += [index] * max(len(boxes), 1)
        results = self.predict_each(crops)
        grouped: list[list[Prediction | NonFiniteOutput]] = [[] for _ in images]
        for owner, result in zip(owners, results):
            grouped[owner].append(result)
        return [_joined(image, parts) if regional and image.regions else parts[0]
                for image, parts in zip(images, grouped)]

    def _prediction(self, lesion_logits: np.ndarray | None, shape: tuple[int, int],
                    classes: np.ndarray | None) -> Prediction:
        prediction = Prediction(
            None if lesion_logits is None else self._probability_map(lesion_logits, shape),
            None if classes is None else dict(zip(self.class_names, map(float, classes))))
        if self.rule is not None:
            prediction.decision = decide(self.rule, prediction.class_probabilities,
                                         prediction.lesion_probability)
        return prediction

    def _probability_map(self, logits: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        # Resize logits, not probabilities: the 0.5 contour stays where the model put it.
        resized = restore_size(logits, shape, self.transform_config)
        return expit(resized).astype(np.float32, copy=False)


def _open(source: Checkpoint | str | Path, backend: str, device: str
          ) -> tuple[Checkpoint | None, Any, CheckpointMeta, TaskOutputs, bool]:
    """(checkpoint or None for an ONNX file, runner, meta, task, whether it is a detector)."""
    if backend == "onnx":
        # Imported on use: ONNX Runtime is an extra.
        from sonocad.extras import require
        require("onnx")
        from sonocad.inference.onnx_backend import OnnxRunner
    if is_onnx_file(source):
        if backend != "onnx":
            raise InputError(source, "an ONNX model runs on the onnx back end, not torch")
        runner = OnnxRunner.from_file(source)
        task = _task_outputs(runner.info.task, backend)
        return None, _augmented(runner, runner.info), runner.info, task, False
    # A checkpoint: torch from here on.
    from sonocad.checkpoint import Checkpoint, load_checkpoint
    from sonocad.inference.logits import TorchRunner, check_task

    checkpoint = source if isinstance(source, Checkpoint) else load_checkpoint(source)
    task = check_task(checkpoint.task, backend)
    outputs = TaskOutputs(task.name, task.lesion_map, task.class_scores)
    if task.detector:
        from sonocad.inference.detection import DetectionPredictor

        return checkpoint, DetectionPredictor(checkpoint, device), checkpoint.info, outputs, True
    runner = (TorchRunner(checkpoint.build_model(), task, device) if backend == "torch"
              else OnnxRunner.from_checkpoint(checkpoint))
    return checkpoint, _augmented(runner, checkpoint.info), checkpoint.info, outputs, False


def _task_outputs(name: str, backend: str) -> TaskOutputs:
    """A built-in task's outputs without torch; another (registered) task's from its object."""
    if name in _TASK_OUTPUTS:
        return TaskOutputs(name, *_TASK_OUTPUTS[name])
    from sonocad.inference.logits import check_task  # torch: a task registered by a user

    task = check_task(name, backend)
    return TaskOutputs(task.name, task.lesion_map, task.class_scores)


def _augmented(runner: Runner, meta: CheckpointMeta) -> Runner:
    return FlipAveraged(runner) if meta.tta == "hflip" else runner


class FlipAveraged:
    """`runner` on the batch and on its left-right mirror in one call, the logits averaged (the
    mirror's lesion map mirrored back first): breast ultrasound has no left or right, so the
    two views are equally likely and their mean steadier than either."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        n = len(batch)
        both = self.runner(np.concatenate([batch, batch[..., ::-1]]))
        return tuple((out[:n] + (out[n:, ..., ::-1] if out.ndim == 4 else out[n:])) / 2
                     for out in both)


def _joined(image: Image, parts: list[Prediction | NonFiniteOutput]
            ) -> Prediction | NonFiniteOutput:
    """One image's prediction from its regions' (see `Predictor.predict_images`)."""
    predictions = [part for part in parts if isinstance(part, Prediction)]
    if len(predictions) < len(parts):  # a region's output is not finite: nor is the image's
        return next(part for part in parts if isinstance(part, NonFiniteOutput))
    lesion = np.zeros(image.shape, np.float32)
    for region, part in zip(image.regions, predictions):
        x0, y0, x1, y1 = region.box
        lesion[y0:y1, x0:x1] = part.lesion_probability
    leading = max(predictions,
                  key=lambda part: 1 - (part.class_probabilities or {}).get("normal", 1))
    return Prediction(lesion, leading.class_probabilities, leading.decision,
                      regions=image.regions)


def _non_finite_images(outputs: Iterable[np.ndarray]) -> list[NonFiniteOutput | None]:
    """Per image of the batch: its `NonFiniteOutput` where any of its outputs is not finite."""
    per_output = list(zip(*(map(_non_finite, output) for output in outputs)))
    return [next((NonFiniteOutput(kind) for kind in kinds if kind), None)
            for kinds in per_output]


def _non_finite(array: np.ndarray) -> str | None:
    """"nan" or "inf" if `array` holds one (NaN first), else None."""
    if np.isfinite(array).all():
        return None
    return "nan" if np.isnan(array).any() else "inf"


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
