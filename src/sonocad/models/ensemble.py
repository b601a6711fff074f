"""A deep ensemble: trained multitask models run on one input, their logits averaged.

Members are trained on their own (each by its recipe) and joined afterwards (their weights
under ``members.<i>.``, `ensemble_state_dict`). Averaging logits, not probabilities, keeps one
graph that ONNX exports like any other model. An ensemble can be fine-tuned as one model (its
training outputs, deep-supervision maps too, are the members' averages): `sonocad train --init`
from a bundled ensemble. Grad-CAM of the class head reads the first member's layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sonocad.errors import SonocadError
from sonocad.models.registry import create_model, model_task, register_model

TASK = "multitask"


class Ensemble(nn.Module):
    def __init__(self, members: Sequence[Mapping[str, Any]],
                 num_classes: int | None = None) -> None:
        super().__init__()
        if not isinstance(members, Sequence) or len(members) < 2 or not all(
                isinstance(spec, Mapping) and isinstance(spec.get("name"), str)
                and isinstance(spec.get("args", {}), Mapping) for spec in members):
            raise SonocadError("an ensemble needs at least two members, each {name, args}")
        for spec in members:
            if model_task(spec["name"]) != TASK:
                raise SonocadError(f"ensemble members must be {TASK} models, not "
                                   f"{spec['name']!r}")
        classes = {} if num_classes is None else {"num_classes": num_classes}
        self.members = nn.ModuleList(create_model(spec["name"], **{**spec.get("args", {}),
                                                                   **classes})
                                     for spec in members)
        first = getattr(self.members[0], "class_cam_layer", None)
        self.class_cam_layer = f"members.0.{first}" if first else None
        self.encoder_prefixes = tuple(
            f"members.{index}.{prefix}" for index, member in enumerate(self.members)
            for prefix in getattr(member, "encoder_prefixes", ()))

    def forward(self, x: Tensor) -> dict[str, object]:
        outputs = [member(x) for member in self.members]
        return {"out": _mean(o["out"] for o in outputs),
                "aux": [_mean(maps) for maps in zip(*(o["aux"] for o in outputs))],
                "class_logits": _mean(o["class_logits"] for o in outputs)}


def _mean(tensors: Iterable[Tensor]) -> Tensor:
    return torch.stack(list(tensors)).mean(0)


@register_model("ensemble", task=TASK)
def ensemble(members: Sequence[Mapping[str, Any]], num_classes: int | None = None) -> Ensemble:
    """`members`: each member's model spec, {"name": ..., "args": {...}}; `num_classes`, where
    given, replaces theirs."""
    return Ensemble(members, num_classes)


def ensemble_state_dict(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """The members' weights under the ensemble's keys."""
    return {f"members.{index}.{key}": value for index, state in enumerate(states)
            for key, value in state.items()}
