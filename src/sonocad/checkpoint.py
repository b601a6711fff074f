"""Self-describing checkpoints: `predict`, `evaluate`, `export` and `serve` need the file alone.

A checkpoint holds the model's registry name and arguments, the task, class names, the exact
preprocessing, the recipe, fingerprints of the training data and split, the metrics at
selection and the package version; a training checkpoint (``last.pt``) also holds what
``--resume`` needs (optimiser, scheduler, RNG state, progress).

A checkpoint may come from a stranger, so loading one trusts nothing in it: it is unpickled
weights-only; its meta (and an exported ONNX file's) must have the fields every reader uses and
stay within bounds that size memory and work (`read_meta`: input size, class count, a
detector's resize, the despeckle filter and CLAHE tiles); its model is built first with no
memory behind it (torch's meta device), so that arguments that would size tensors other than
the file's own are refused before anything is allocated; and the model is built without
pretrained weights, whatever the meta asks, so that loading never fetches anything: the weights
are the file's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sonocad import __version__
from sonocad.errors import InputError, SonocadError
from sonocad.io.atomic import atomic_open
from sonocad.meta import MAX_CLASSES, MAX_INPUT_SIDE, CheckpointMeta, read_meta

FORMAT = "sonocad-checkpoint/1"
BUNDLED_MODEL = ("weights", "default.pt")  # inside the sonocad package
__all__ = ["BUNDLED_MODEL", "FORMAT", "MAX_CLASSES", "MAX_INPUT_SIDE", "Checkpoint",
           "CheckpointMeta", "bundled_checkpoint", "load_checkpoint", "non_finite",
           "non_finite_weights", "save_checkpoint"]
@dataclass
class Checkpoint:
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    training_state: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)  # the file it was loaded from

    @property
    def info(self) -> CheckpointMeta:
        """The meta, typed (`meta` is what the file stores; `load_checkpoint` checked it)."""
        return CheckpointMeta.from_dict(self.meta)

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    def build_model(self) -> nn.Module:
        """The model with its trained weights, in eval mode; never with pretrained weights."""
        source = self.path or Path("checkpoint")
        damage = non_finite_weights(self.state_dict)
        if damage:
            raise InputError(source, f"its weights are not finite ({damage}): the file is "
                                     "damaged or its training diverged")
        with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised
            self._check_weights_fit(source, self._create_model(source))
        model = self._create_model(source)
        model.load_state_dict(self.state_dict)
        return model.eval()

    def _create_model(self, source: Path) -> nn.Module:
        from sonocad.models import create_model

        spec = self.info.model
        # pretrained=None over the meta's own: the weights come from this file, and loading
        # a checkpoint must never fetch anything.
        args = {**spec.args, "pretrained": None}
        try:
            return create_model(spec.name, **args)
        except SonocadError as exc:
            raise InputError(source, f"cannot build its model ({exc})") from None

    def _check_weights_fit(self, source: Path, model: nn.Module) -> None:
        name, expected = self.info.model.name, model.state_dict()
        missing, unexpected = _key_mismatch(expected, self.state_dict)
        if missing or unexpected:
            raise InputError(source, f"its weights do not fit model {name!r} "
                                     f"({len(missing)} missing, {len(unexpected)} unexpected; "
                                     f"first: {(missing or unexpected)[0]})")
        for key, tensor in expected.items():  # another size of the same model
            if tensor.shape != self.state_dict[key].shape:
                raise InputError(source, f"its weights do not fit model {name!r} ({key} is "
                                         f"{tuple(self.state_dict[key].shape)} in the file, "
                                         f"{tuple(tensor.shape)} in the model)")


def _key_mismatch(expected: dict[str, Any], given: dict[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def save_checkpoint(path: str | Path, checkpoint: Checkpoint) -> None:
    meta = {**checkpoint.meta, "format": FORMAT, "sonocad_version": __version__}
    payload = {"meta": meta, "state_dict": checkpoint.state_dict}
    if checkpoint.training_state is not None:
        payload["training_state"] = checkpoint.training_state
    with atomic_open(path, "wb") as handle:
        torch.save(payload, handle)


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such checkpoint")
    try:
        # weights_only: a checkpoint from a stranger cannot run code when loaded. On garbage
        # its unpickler raises almost anything (IndexError, KeyError, UnicodeDecodeError, ...)
        # and warns about odd protocols: any failure means the file is not a checkpoint.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    meta = payload.get("meta") if isinstance(payload, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InputError(path, f"not a sonocad checkpoint (expected format {FORMAT})")
    weights = payload.get("state_dict")
    if not isinstance(weights, dict) or not all(
            isinstance(value, torch.Tensor) for value in weights.values()):
        raise InputError(path, "damaged sonocad checkpoint: state_dict should map names to "
                               "tensors")
    read_meta(path, meta)
    return Checkpoint(meta, weights, payload.get("training_state"), path)


def bundled_checkpoint() -> Checkpoint:
    """The default model bundled in the package (``sonocad/weights/default.pt``)."""
    resource = files("sonocad").joinpath(*BUNDLED_MODEL)
    if not resource.is_file():
        raise SonocadError("no bundled default model (sonocad/weights/default.pt); pass a "
                           "checkpoint")
    with as_file(resource) as path:
        return load_checkpoint(path)


def non_finite_weights(state_dict: dict[str, Tensor]) -> str | None:
    """Which of a model's weights are not finite ("89 of 118 tensors hold nan, e.g.
    head.bias"), or None when every value is a number."""
    damaged = {name: kind for name, tensor in state_dict.items()
               if (kind := non_finite(tensor)) is not None}
    if not damaged:
        return None
    first = next(iter(damaged))
    kinds = " or ".join(sorted(set(damaged.values())))
    return f"{len(damaged)} of {len(state_dict)} tensors hold {kinds}, e.g. {first}"


def non_finite(tensor: Tensor) -> str | None:
    """"nan" or "inf" if `tensor` holds one (NaN first), else None; integer tensors are finite."""
    if not tensor.is_floating_point() or torch.isfinite(tensor).all():
        return None
    return "nan" if torch.isnan(tensor).any() else "inf"
