"""A model's meta, checked once and then read by attribute (`CheckpointMeta`): torch-free, so
the ONNX back end reads it without loading torch.

A checkpoint or exported ONNX file may come from a stranger: its meta must have the fields every
reader uses and stay within bounds that size memory and work: input size, class count, a
detector's resize, the despeckle filter and CLAHE tiles, and a known test-time augmentation.
The file keeps the meta as a plain mapping (what torch's weights-only loader and ONNX metadata
hold); `CheckpointMeta` is its typed view. A stdlib dataclass, not pydantic: pydantic's import
alone is a tenth of the one-second budget of `sonocad predict`, and `read_meta` already checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonocad.errors import InputError, SonocadError
from sonocad.model_input import InputSpec

META_KEY = "sonocad_meta"  # where an exported ONNX file keeps its meta (custom metadata)
# Twice the largest input of a recipe (Mask R-CNN's 1024): one image at this size and a
# ResNet-101 already takes gigabytes; 3072 drove one small image to 4.3 GB.
MAX_INPUT_SIDE = 2048
# ImageNet's class count; a breast ultrasound model has two to seven.
MAX_CLASSES = 1000
# Model arguments that resize the input inside the model (torchvision's detectors).
_INPUT_SIZE_ARGS = ("min_size", "max_size")
# Preprocessing values that set the work or memory per image, at the image's own size: the
# despeckle filter's width and CLAHE's tiles per side (OpenCV pads the image to whole tiles: a
# 100,000-tile grid is a 10 GB image). Generous: the recipes use 5 and 8.
_TRANSFORM_LIMITS = {"despeckle_size": 99, "clahe_tiles": 64}


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the model registry's name
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a model file says of itself. The first four fields every file has (`read_meta`
    checks them); the training record may be absent from a file `sonocad train` did not write
    (a joined ensemble, a hand-made test file)."""

    task: str
    model: ModelSpec
    class_names: tuple[str, ...]
    transform: dict[str, Any]  # the preprocessing as recorded (`InputSpec.from_dict` reads it)
    tta: str | None = None  # one of TEST_TIME_AUGMENTATIONS
    decision: dict[str, Any] | None = None  # `sonocad.inference.decision.DecisionRule`
    data: dict[str, Any] = field(default_factory=dict)  # sources, fingerprints, labels
    recipe: dict[str, Any] | None = None  # the recipe it was trained with
    init: dict[str, Any] | None = None  # the model it was fine-tuned from
    select_metric: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # validation figures at selection
    epoch: int | None = None
    step: int | None = None
    sonocad_version: str | None = None

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> CheckpointMeta:
        """The typed view of a stored meta whose structure `read_meta` checked (or a partial
        one a report rebuilds from an evaluation: no transform)."""
        model = meta["model"]
        return cls(task=meta["task"], model=ModelSpec(model["name"], dict(model.get("args") or {})),
                   class_names=tuple(meta["class_names"]), transform=meta.get("transform") or {},
                   tta=meta.get("tta"), decision=meta.get("decision"),
                   data=meta.get("data") or {}, recipe=meta.get("recipe"),
                   init=meta.get("init"), select_metric=meta.get("select_metric"),
                   metrics=meta.get("metrics") or {}, epoch=meta.get("epoch"),
                   step=meta.get("step"), sonocad_version=meta.get("sonocad_version"))


def read_meta(path: Path, meta: Any, kind: str = "checkpoint") -> CheckpointMeta:
    """`meta` checked and typed; an InputError naming `path` (a sonocad `kind`: "checkpoint",
    "ONNX model") and the key when it lacks a field every reader relies on, or holds a value
    out of the bounds above."""
    problem = _structure_problem(meta)
    if problem:
        raise InputError(path, f"damaged sonocad {kind}: {problem}")
    problem = _bounds_problem(meta)
    if problem:
        raise InputError(path, f"its meta {problem}")
    return CheckpointMeta.from_dict(meta)


# meta["tta"]: None, or "hflip" (the Predictor averages the image and its mirror image).
TEST_TIME_AUGMENTATIONS = (None, "hflip")

# What every reader of a checkpoint relies on: key -> (type, what it must be).
_META_FIELDS = {"task": (str, "a task name"), "model": (dict, "the model's name and args"),
                "class_names": (list, "a list of class names"),
                "transform": (dict, "the preprocessing")}


def _structure_problem(meta: Any) -> str | None:
    if not isinstance(meta, dict):
        return "its meta should be a mapping"
    for key, (kind, meaning) in _META_FIELDS.items():
        if not isinstance(meta.get(key), kind):
            return f"meta[{key!r}] should be {meaning}"
    if not isinstance(meta["model"].get("name"), str) or not isinstance(
            meta["model"].get("args", {}), dict):
        return "meta['model'] should hold a name and args"
    return None


def _bounds_problem(meta: dict[str, Any]) -> str | None:
    try:
        transform = InputSpec.from_dict(meta["transform"])
    except (SonocadError, TypeError, ValueError) as exc:  # values of any type, from anyone
        return f"transform cannot be used ({exc})"
    if max(transform.size) > MAX_INPUT_SIDE:
        return (f"transform.input_size {meta['transform']['input_size']!r} is over the limit "
                f"of {MAX_INPUT_SIDE} pixels a side")
    for key, limit in _TRANSFORM_LIMITS.items():
        if getattr(transform, key) > limit:
            return f"transform.{key} {getattr(transform, key)} is over the limit of {limit}"
    if len(meta["class_names"]) > MAX_CLASSES:
        return (f"class_names holds {len(meta['class_names']):,} classes, over the limit of "
                f"{MAX_CLASSES:,}")
    if meta.get("tta") not in TEST_TIME_AUGMENTATIONS:
        return (f"tta {meta['tta']!r} is not a known test-time augmentation (known: "
                f"{', '.join(str(t) for t in TEST_TIME_AUGMENTATIONS if t)})")
    args = meta["model"].get("args", {})
    for key in _INPUT_SIZE_ARGS:
        value = args.get(key, 0)
        if not isinstance(value, int) or value > MAX_INPUT_SIDE:
            return (f"model.args.{key} {value!r} is not a size within the limit of "
                    f"{MAX_INPUT_SIDE} pixels")
    return None
