"""What a task is: everything that differs between segmentation, classification, multitask and
detection, behind one interface the trainer, the predictor and the evaluator ask.

A task owns its class names and head arguments, the dataset item and the training targets, the
forward pass and the loss, validation (rows per batch, metrics over rows) and its default
selection metric, what its predictions hold, and its evaluation (`evaluate`: the predictions
table, metrics.json and figures). nnU-Net's trainer hooks are the model: the loops stay in
`sonocad.engine` and `sonocad.workflows`; only the hooks differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from sonocad.data.sample import Sample
from sonocad.errors import SonocadError
from sonocad.io.pixels import Image
from sonocad.meta import CheckpointMeta
from sonocad.progress import progress

LossFn = Callable[[Any, Any], Tensor]


class PredictorLike(Protocol):
    """What evaluation needs of a predictor (`sonocad.inference`): classes, meta, predict."""

    class_names: list[str]
    info: CheckpointMeta

    def predict(self, images: Sequence[Any]) -> list[Any]: ...


# (sample, its image or None where it is no longer needed, the model's prediction)
Predicted = tuple[Sample, Image | None, Any]


@dataclass(frozen=True)
class EvaluationResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]


class Task:
    """The hooks; subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    select_metric: ClassVar[str]  # the validation metric best.pt is chosen on by default
    reads_masks: ClassVar[bool] = False  # items need the lesion masks
    labelled: ClassVar[bool] = False  # items need a class label
    lesion_map: ClassVar[bool] = False  # predictions hold a lesion probability map
    class_scores: ClassVar[bool] = False  # predictions hold class probabilities
    detector: ClassVar[bool] = False  # torchvision's detection contract (instances)
    validation_loss: ClassVar[bool] = True  # validation computes the loss (a scheduler may watch)
    # What `logits` returns, in order: the ONNX outputs; () where export is not verified.
    output_names: ClassVar[tuple[str, ...]] = ()

    def accepts_model(self, model_task: str) -> bool:
        """Whether a model registered for `model_task` (`sonocad.models`) can do this task."""
        return model_task == self.name

    def check_recipe(self, recipe: Any, path: Path) -> None:
        """One-line errors (`InputError`) for settings of a recipe (`sonocad.engine.recipe.
        Recipe`) this task cannot use; may fill in settings that follow from others."""

    # --- classes and heads ---------------------------------------------------------------

    def class_names(self, classes: Sequence[str]) -> list[str]:
        """The classes the model's head predicts, from the recipe's classes (or labels)."""
        return list(classes)

    def head_args(self, class_names: Sequence[str]) -> dict[str, Any]:
        return {"num_classes": len(class_names)}

    # --- data ----------------------------------------------------------------------------

    def check_samples(self, samples: Sequence[Sample], class_names: Sequence[str]) -> None:
        """A one-line error where the samples cannot be trained on for this task."""
        if not self.labelled:
            return
        unknown = sorted({s.label for s in samples} - set(class_names) - {None})
        if unknown or any(s.label is None for s in samples):
            raise SonocadError(f"labels {unknown or ['(none)']} are not among the recipe's "
                               f"classes {list(class_names)}; set data.labels to filter "
                               "samples")

    def item(self, sample: Sample, mask: Tensor | None,
             class_names: Sequence[str]) -> dict[str, Any]:
        """The dataset item's fields besides "image" and "index"; `mask` (1, H, W) is the
        augmented lesion mask (None where the task reads no masks)."""
        return {}

    def targets(self, batch: dict[str, Any], device: torch.device) -> Any:
        raise NotImplementedError

    # --- training ------------------------------------------------------------------------

    def forward(self, model: nn.Module, images: Tensor, targets: Any) -> Any:
        """The model's outputs in training mode, as `build_loss`'s function takes them."""
        return model(images)

    def build_loss(self, config: dict[str, Any]) -> LossFn:
        """(outputs, targets) -> scalar loss, from the recipe's ``loss`` section."""
        raise NotImplementedError

    def validation_rows(self, model: nn.Module, batch: dict[str, Any], loss_fn: LossFn,
                        device: torch.device) -> list[Any]:
        """One record per image of a validation batch (the model is in eval mode)."""
        raise NotImplementedError

    def validation_metrics(self, rows: list[Any], class_names: Sequence[str]
                           ) -> dict[str, float]:
        """The validation metrics over the records of `validation_rows`."""
        raise NotImplementedError

    # --- inference and evaluation --------------------------------------------------------

    def logits(self, outputs: Any) -> tuple[Tensor, ...]:
        """The eval-mode outputs as the tuple named by `output_names`."""
        raise NotImplementedError

    def evaluate(self, model: PredictorLike, samples: list[Sample], out: Path,
                 split_spec: str, *, predictions: Iterable[Predicted] | None = None,
                 overlays: int = 6, batch_size: int = 8, n_boot: int = 2000,
                 checkpoint: str | Path | None = None) -> EvaluationResult:
        """Score `model` on labelled `samples`; write the predictions table, metrics.json and
        figures into `out`. `predictions`, in `samples` order, when the caller has them."""
        raise NotImplementedError


def predict_samples(model: PredictorLike, samples: list[Sample], batch_size: int,
                    what: str = "evaluating") -> Iterator[Predicted]:
    """Stream (sample, image, prediction) in batches; memory stays flat. `what` names the
    progress line (one per call)."""
    for start in progress(range(0, len(samples), batch_size), what,
                          len(samples), unit="images",
                          size=lambda start: min(batch_size, len(samples) - start)):
        chunk = samples[start:start + batch_size]
        images = [sample.load_image() for sample in chunk]
        yield from zip(chunk, images, model.predict([image.pixels for image in images]))


def nanmean(values: list[float]) -> float:
    """The mean of the finite values; NaN where there is none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
