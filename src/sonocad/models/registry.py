"""The model registry: builders register by name and `create_model` is the one way in.

Output contracts by task:
- segmentation: ``forward(x)`` with x float (N, 3, H, W) returns :class:`SegmentationOutput`,
  ``{"out": logits (N, C, H, W), "aux": [extra logits maps (N, C, H, W), ...]}``, every map at
  the input resolution; C defaults to 1 (a lesion logit for a sigmoid).
- classification: logits (N, num_classes).
- detection: torchvision's contract (a loss dict in training mode, a list of per-image
  prediction dicts in eval mode).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict, TypeVar

from torch import Tensor, nn

from sonocad.errors import SonocadError

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


class SegmentationOutput(TypedDict):
    out: Tensor
    aux: list[Tensor]


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    task: str  # the task it is built for (`sonocad.tasks` checks a recipe's pairing)
    pretrained: tuple[str, ...]


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, task: str,
                   pretrained: tuple[str, ...] = ()) -> Callable[[Builder], Builder]:
    """Register a builder under `name`; `pretrained` names the weight tags it can load.

    A builder with tags takes a ``pretrained`` keyword; `create_model` checks the tag first.
    """
    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = _Entry(builder, task, tuple(pretrained))
        return builder

    return decorate


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise SonocadError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, *, pretrained: str | None = None, **kwargs: object) -> nn.Module:
    """Build model `name` with builder arguments `kwargs`.

    `pretrained` is None (or "none") for random initialisation, or one of the model's weight
    tags (e.g. "imagenet"); nothing is downloaded unless a tag is asked for.
    """
    entry = _entry(name)
    if pretrained is not None and str(pretrained).lower() != "none":
        if pretrained not in entry.pretrained:
            choices = ", ".join([*entry.pretrained, "none"])
            raise SonocadError(f"model {name!r} has no {pretrained!r} weights; "
                               f"choose pretrained from: {choices}")
        kwargs["pretrained"] = pretrained
    signature = inspect.signature(entry.builder)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:  # a typo in a recipe's model.args is a user error, not a crash
        raise SonocadError(f"model {name!r}: {exc}; it takes: "
                           f"{', '.join(signature.parameters)}") from exc
    return entry.builder(**kwargs)


def list_models(task: str | None = None, *, built_in: bool = False) -> list[str]:
    """Registered model names (sorted), optionally only those for one task, or only sonocad's
    own (`built_in`: not those a plug-in or a test registered)."""
    return sorted(name for name, entry in _REGISTRY.items() if task in (None, entry.task)
                  and (not built_in or entry.builder.__module__.startswith("sonocad.")))


def model_task(name: str) -> str:
    """The task ("segmentation", "classification" or "detection") model `name` solves."""
    return _entry(name).task
