"""Self-describing checkpoints: `predict`, `evaluate`, `export` and `serve` need the file alone.

A checkpoint holds the model's registry name and arguments, the task, class names, the exact
preprocessing, the recipe, fingerprints of the training data and split, the metrics at
selection and the package version; a training checkpoint (``last.pt``) also holds what
``--resume`` needs (optimiser, scheduler, RNG state, progress).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sonocad import __version__
from sonocad.errors import InputError, SonocadError
from sonocad.io.atomic import atomic_open

FORMAT = "sonocad-checkpoint/1"


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    training_state: dict[str, Any] | None = None
    path: Path | None = field(default=None, compare=False)  # the file it was loaded from

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def build_model(self) -> nn.Module:
        """The model with its trained weights, in eval mode."""
        from sonocad.models import create_model

        spec = self.meta["model"]
        source = self.path or Path("checkpoint")
        try:
            model = create_model(spec["name"], **spec.get("args", {}))
        except SonocadError as exc:
            raise InputError(source, f"cannot build its model ({exc})") from None
        missing, unexpected = _key_mismatch(model.state_dict(), self.state_dict)
        if missing or unexpected:
            raise InputError(source, f"its weights do not fit model {spec['name']!r} "
                                     f"({len(missing)} missing, {len(unexpected)} unexpected; "
                                     f"first: {(missing or unexpected)[0]})")
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:  # shapes that differ: another size of the same model
            first = " ".join(str(exc).split())[:200]
            raise InputError(source, f"its weights do not fit model {spec['name']!r} "
                                     f"({first})") from None
        return model.eval()


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
    problem = _structure_problem(payload)
    if problem:
        raise InputError(path, f"damaged sonocad checkpoint: {problem}")
    return Checkpoint(meta, payload["state_dict"], payload.get("training_state"), path)


# What every reader of a checkpoint relies on: key -> (type, what it must be).
_META_FIELDS = {"task": (str, "a task name"), "model": (dict, "the model's name and args"),
                "class_names": (list, "a list of class names"),
                "transform": (dict, "the preprocessing")}


def _structure_problem(payload: dict[str, Any]) -> str | None:
    meta = payload["meta"]
    for key, (kind, meaning) in _META_FIELDS.items():
        if not isinstance(meta.get(key), kind):
            return f"meta[{key!r}] should be {meaning}"
    if not isinstance(meta["model"].get("name"), str) or not isinstance(
            meta["model"].get("args", {}), dict):
        return "meta['model'] should hold a name and args"
    weights = payload.get("state_dict")
    if not isinstance(weights, dict) or not all(
            isinstance(value, torch.Tensor) for value in weights.values()):
        return "state_dict should map names to tensors"
    return None
