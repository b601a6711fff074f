"""Self-describing checkpoints: `predict`, `evaluate`, `export` and `serve` need the file alone.

A checkpoint holds the model's registry name and arguments, the task, class names, the exact
preprocessing, the recipe, fingerprints of the training data and split, the metrics at
selection and the package version; a training checkpoint (``last.pt``) also holds what
``--resume`` needs (optimiser, scheduler, RNG state, progress).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sonocad import __version__
from sonocad.errors import InputError
from sonocad.io.atomic import atomic_open

FORMAT = "sonocad-checkpoint/1"


@dataclass
class Checkpoint:
    meta: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    training_state: dict[str, Any] | None = None

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
        model = create_model(spec["name"], **spec.get("args", {}))
        model.load_state_dict(self.state_dict)
        return model.eval()


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
        # weights_only: a checkpoint from a stranger cannot run code when loaded.
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as exc:
        raise InputError(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or payload.get("meta", {}).get("format") != FORMAT:
        raise InputError(path, f"not a sonocad checkpoint (expected format {FORMAT})")
    return Checkpoint(payload["meta"], payload["state_dict"], payload.get("training_state"))
