"""Recipes: YAML files that log exactly how a model is trained, plus `key=value` overrides.

An override names a dotted path from the top (``train.max_steps=2``), a dotted path that
starts inside exactly one section (``augment.hflip`` for ``transform.augment.hflip``), or a bare
key that occurs exactly once in the recipe (``max_steps=2``); none makes a new section. Values
are parsed as YAML, so ``lr=3e-4`` is a float and ``augment.hflip=null`` removes an
augmentation.

A loaded recipe is a `Recipe` (pydantic): every section typed, unknown keys and wrong types
one-line errors naming the key, and the task / model pairing checked by the task.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sonocad.errors import InputError, SonocadError
from sonocad.models import list_models, model_task
from sonocad.tasks import Task, get_task, task_names
from sonocad.transforms import TransformConfig


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads 3e-4 as a string; learning rates are written that way, so read floats."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?\.(inf|Inf|INF)$|^\.(nan|NaN|NAN)$"),
    list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader subclass)


Positive = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    # strict: YAML gives typed values, and "yes" is not a boolean nor "8" a batch size
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelSection(_Section):
    name: str | None = None  # required; None so that DEFAULTS can list the key
    args: dict[str, Any] = {}
    pretrained: str | None = None
    # Start from a trained checkpoint's weights: "default" (the bundled model) or a path;
    # pretrained is then not loaded (the checkpoint's weights replace it).
    init: str | None = None


class ViewsSection(_Section):
    """Random windows of training images (`sonocad.data.views`)."""

    p: Annotated[float, Field(ge=0, le=1)]
    tissue: Annotated[float, Field(ge=0, le=1)] = 0.5
    scale: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.35, 0.75]
    margin: Annotated[float, Field(ge=0, lt=0.5)] = 0.05


class DataSection(_Section):
    layout: str | None = None
    classes: list[str] = ["normal", "benign", "malignant"]
    labels: list[str] | None = None
    train_subsets: list[str] = ["train"]
    val_subset: str = "val"
    limit: Positive | None = None
    cache: bool = True
    sources: list[dict[str, Any]] | None = None  # checked by sonocad.data.sources
    replay: list[dict[str, Any]] | None = None  # trained on, never validated on (fine-tuning)
    class_weights: dict[str, float] | None = None
    views: ViewsSection | None = None


class LossSection(_Section):
    name: str | None = None
    args: dict[str, Any] = {}  # the loss function's keyword arguments
    classification: dict[str, Any] | None = None  # multitask: {weight, args}


class OptimizerSection(_Section):
    name: Literal["sgd", "adam", "adamw"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: float = 0.9
    betas: Annotated[list[float], Field(min_length=2, max_length=2)] = [0.9, 0.999]


class SchedulerSection(_Section):
    name: Literal["none", "cosine", "warmup_cosine", "plateau"] = "none"
    args: dict[str, Any] = {}


class TrainSection(_Section):
    batch_size: Positive = 8
    epochs: Positive = 10
    max_steps: Positive | None = None
    seed: int = 0
    num_workers: Annotated[int, Field(ge=0)] = 0
    select_metric: str | None = None
    select_mode: Literal["max", "min"] = "max"
    early_stopping: Positive | None = None
    checkpoint_every: Positive | None = None
    eval_batch_size: Positive = 16
    amp: bool = True
    grad_clip: PositiveFloat | None = None
    max_minutes: PositiveFloat | None = None
    tensorboard: bool = False
    channels_last: bool = False
    # Fine-tuning: the encoder (a model's `encoder_prefixes`) learns nothing for this many
    # epochs, so that a new head settles before the features it reads are moved.
    freeze_encoder_epochs: Annotated[int, Field(ge=0)] = 0


class Recipe(_Section):
    """A checked recipe; `to_dict` is what checkpoints and recipe.yaml record."""

    task: str
    description: str | None = None
    model: ModelSection
    data: DataSection = DataSection()
    # Checked and filled by TransformConfig (`parse_recipe`): readers get its attributes.
    transform: TransformConfig = Field(default_factory=TransformConfig)
    loss: LossSection = LossSection()
    optimizer: OptimizerSection = OptimizerSection()
    scheduler: SchedulerSection = SchedulerSection()
    train: TrainSection = TrainSection()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


SECTIONS = set(Recipe.model_fields)
# Defaults a recipe may leave out, as data (overrides resolve bare keys against them); every
# key a recipe may set appears here or in a section whose contents another module validates
# (model.args, transform, loss.args, ...).
DEFAULTS: dict[str, Any] = {
    "model": ModelSection().model_dump(), "data": DataSection().model_dump(), "transform": {},
    "loss": LossSection().model_dump(), "optimizer": OptimizerSection().model_dump(),
    "scheduler": SchedulerSection().model_dump(), "train": TrainSection().model_dump()}

# One line per section and key, for docs/reference.md (`python -m sonocad.reference`), which
# refuses a section, a key of DEFAULTS or a transform key (sonocad.transforms.TransformConfig)
# without one. Choices that a module lists (tasks, models, losses, normalisations) are added
# there, from that module.
KEY_DESCRIPTIONS: dict[str, str] = {
    "task": "what the model learns (required)",
    "description": "free text on what the recipe trains; shown in the report's model card",
    "model": "the network and its starting weights",
    "model.name": "a registered model (required)",
    "model.args": "keyword arguments of the model's builder, e.g. `{dropout: 0.2}`; "
                  "`num_classes` is set from the classes",
    "model.pretrained": "weight tag to start from (`imagenet` where the model has it); "
                        "`null` or `none`: random initialisation, nothing downloaded",
    "model.init": "start from a trained checkpoint's weights: `default` (the bundled model) "
                  "or a path; same model, arguments and classes; `--init` sets it",
    "data": "which images train and validate, and how often each is drawn",
    "data.layout": "dataset layout of every source (`null`: detected per source)",
    "data.classes": "class names the class head predicts, in this order (classification, "
                    "multitask; detection drops `normal`)",
    "data.labels": "train and validate only on images with these labels, which then also "
                   "replace `classes` (`null`: every image)",
    "data.train_subsets": "split subsets to train on; K-fold: the training folds, e.g. "
                          "`[fold0, fold1, fold2, fold3]`",
    "data.val_subset": "split subset to validate and select on (never the test); K-fold: the "
                       "held-out fold, e.g. `fold4`",
    "data.limit": "smoke runs: at most N images per source from the training subsets and N "
                  "from the validation subset, evenly spaced in id order (`null`: all)",
    "data.cache": "decode every image once, before the first epoch, and keep it in memory",
    "data.sources": "data sets, each `{name, path, split, weight}`; `--data DIR --split FILE` "
                    "per source replaces them (see below)",
    "data.replay": "data sets trained on but never validated on, each `{name, path, split, "
                   "weight}`, joining `--data`: fine-tuning keeps a share of the original "
                   "data in every epoch",
    "data.class_weights": "draws per epoch of each class's training images, e.g. "
                          "`{normal: 1.5}`; multiplies the source's weight (`null`: 1 each)",
    "data.views": "cut a share `p` of training items to a random window, each side a share "
                  "`scale` of the image's; of a lesion image's windows a share `tissue` keeps "
                  "`margin` clear of the lesion and trains as normal (`null`: whole images)",
    "transform": "how images become model input, the same in training, evaluation and "
                 "inference (stored in every checkpoint)",
    "transform.input_size": "model input in pixels: one int (square) or `[height, width]`",
    "transform.grayscale": "reduce RGB to grey (B-mode is grey; colour is calipers or Doppler)",
    "transform.normalize": "input normalisation: `zscore` per image, `imagenet` mean and std, "
                           "or `unit` (0..1 as read)",
    "transform.despeckle": "speckle filter at the image's own resolution (`null`: none)",
    "transform.despeckle_size": "despeckle filter width in original pixels (odd, >= 3)",
    "transform.clahe": "contrast-limited adaptive histogram equalisation after despeckling",
    "transform.clahe_clip_limit": "CLAHE clip limit",
    "transform.clahe_tiles": "CLAHE tiles per side",
    "transform.keep_aspect": "letterbox to `input_size` (lesion shape is diagnostic) rather "
                             "than stretch",
    "transform.augment": "training-only augmentations by name, each `{parameters..., p}`; "
                         "`true` takes the defaults, `null` or `false` leaves one out",
    "loss": "the training loss",
    "loss.name": "loss by name (`null`: `dice` for segmentation and multitask, `cross_entropy` "
                 "for classification; detection models compute their own); multitask adds "
                 "`loss.classification: {weight, args}` times the cross-entropy of the class head",
    "loss.classification": "multitask: `{weight, args}` of the class head's cross-entropy "
                           "(weight default 1)",
    "loss.args": "keyword arguments of the loss: `aux_weight` for deep-supervision maps "
                 "(default 1), `weights: [background, lesion]` for `weighted_dice`, "
                 "`class_weights` or `label_smoothing` for `cross_entropy`",
    "optimizer": "the optimiser",
    "optimizer.name": "`sgd`, `adam` or `adamw`",
    "optimizer.lr": "learning rate",
    "optimizer.weight_decay": "weight decay",
    "optimizer.momentum": "momentum (`sgd` only)",
    "optimizer.betas": "Adam betas (`adam`, `adamw` only)",
    "scheduler": "the learning-rate schedule",
    "scheduler.name": "`none`, `cosine` or `warmup_cosine` (stepped per optimiser step), or "
                      "`plateau` (per validation, on the validation loss; not for detection)",
    "scheduler.args": "`min_lr_ratio` (cosine, warmup_cosine; default 0), `warmup_steps` "
                      "(warmup_cosine; default 1/20 of the steps), `factor` and `patience` "
                      "(plateau; defaults 0.1 and 10)",
    "train": "the loop: batches, length, selection, checkpoints",
    "train.batch_size": "training images per optimiser step (over all processes)",
    "train.epochs": "passes over the (weighted) training draws",
    "train.max_steps": "smoke runs: stop after this many optimiser steps (`null`: all epochs)",
    "train.seed": "seed of weights, sampling and augmentation: same seed, same run",
    "train.num_workers": "DataLoader worker processes (0: load in the training process)",
    "train.select_metric": "validation metric that picks `best.pt` (`null`: the task's own)",
    "train.select_mode": "`max` or `min`: whether a higher `select_metric` is better",
    "train.early_stopping": "stop after this many validations without improvement (`null`: "
                            "never)",
    "train.checkpoint_every": "steps between `last.pt` saves within an epoch (`null`: at "
                              "each epoch's end only)",
    "train.eval_batch_size": "validation batch size",
    "train.amp": "mixed precision on CUDA (ignored on a CPU)",
    "train.grad_clip": "clip the gradient norm to this (`null`: no clipping)",
    "train.max_minutes": "stop, validate and finish after this much wall time (`null`: no "
                         "limit)",
    "train.tensorboard": "also log to `RUN/tensorboard` (needs the tensorboard package)",
    "train.channels_last": "channels-last memory format (faster depthwise convolutions on a "
                           "CPU)",
    "train.freeze_encoder_epochs": "fine-tuning: the encoder (weights and batch-norm "
                                   "statistics) stays as it started for this many epochs",
}


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe, fill defaults, apply overrides, and check it."""
    path = Path(path)
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such recipe") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(path, f"not a readable YAML recipe ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise InputError(path, "a recipe is a YAML mapping")
    unknown = set(raw) - SECTIONS
    if unknown:
        raise InputError(path, f"unknown recipe section(s): {', '.join(sorted(unknown))}")
    recipe = merge(DEFAULTS, raw)
    for override in overrides:
        apply_override(recipe, override)
    return parse_recipe(recipe, path)


def parse_recipe(recipe: dict[str, Any], path: Path) -> Recipe:
    """The typed recipe of a merged mapping, its task / model pairing and task settings
    checked; the first problem is one line naming the key."""
    try:  # the transform section is TransformConfig's to check, in its own words
        transform = TransformConfig.from_dict(recipe.get("transform") or {})
    except SonocadError as exc:
        raise InputError(path, str(exc)) from None
    try:
        typed = Recipe.model_validate({**recipe, "transform": transform})
    except ValidationError as exc:
        raise InputError(path, _first_problem(exc)) from None
    task = _check_task_and_model(typed, path)
    task.check_recipe(typed, path)
    return typed


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown key {key}"
    if error["type"] == "missing":
        return f"{key} is required"
    return f"{key}: {error['msg'][0].lower()}{error['msg'][1:]}, not {error['input']!r}"


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge `update` into a copy of `base`."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_override(recipe: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise SonocadError(f"override {override!r} is not key=value")
    try:
        value = parse_yaml(text)
    except yaml.YAMLError:
        raise SonocadError(f"override {override!r}: value is not valid YAML") from None
    path = _resolve_dotted(recipe, key) if "." in key else _find_unique(recipe, key)
    node = recipe
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            if part in node:
                raise SonocadError(f"override {override!r}: {part} is not a section")
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


def _resolve_dotted(recipe: dict[str, Any], key: str) -> list[str]:
    """A dotted path from the top (``train.max_steps``), or the one section path it ends
    (``augment.hflip`` for ``transform.augment.hflip``); it never makes a new section."""
    parts = key.split(".")
    if parts[0] in recipe:
        return parts
    parents = [path for path in _leaf_paths(recipe)
               if path[-(len(parts) - 1):] == parts[:-1] and isinstance(_at(recipe, path), dict)]
    if len(parents) == 1:
        return [*parents[0], parts[-1]]
    if not parents:
        raise SonocadError(f"override key {key!r} is not in the recipe; give its full path, "
                           "such as transform.augment.hflip")
    options = ", ".join(".".join(path) for path in parents)
    raise SonocadError(f"override key {key!r} is ambiguous ({options}); give the full path")


def _at(recipe: dict[str, Any], path: list[str]) -> Any:
    node: Any = recipe
    for part in path:
        node = node[part]
    return node


def _find_unique(recipe: dict[str, Any], key: str) -> list[str]:
    matches = [path for path in _leaf_paths(recipe) if path[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SonocadError(f"override key {key!r} is not in the recipe; use a dotted path "
                           "such as train.max_steps")
    options = ", ".join(".".join(m) for m in matches)
    raise SonocadError(f"override key {key!r} is ambiguous ({options}); use a dotted path")


def _leaf_paths(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[list[str]]:
    for key, value in node.items():
        yield [*prefix, key]
        if isinstance(value, dict):
            yield from _leaf_paths(value, (*prefix, key))


ABSENT = "absent"  # how `recipe_changes` shows a key one of the recipes leaves out


def recipe_changes(before: dict[str, Any], after: dict[str, Any]
                   ) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (value after, value before) for every leaf that differs between two
    recipes (`Recipe.to_dict`, or a checkpoint's ``recipe``). A key either leaves out counts
    as its default, and the transforms compare as the preprocessing they give (defaults
    filled), so writing out a default is no change."""
    before, after = (_comparable(recipe) for recipe in (before, after))
    keys = dict.fromkeys([*before, *after])
    return {key: (after.get(key, ABSENT), before.get(key, ABSENT)) for key in keys
            if after.get(key, ABSENT) != before.get(key, ABSENT)}


def _comparable(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe's leaves by dotted key, defaults filled in."""
    full = merge(DEFAULTS, recipe)
    full["transform"] = TransformConfig.from_dict(full["transform"]).to_dict()
    return {".".join(path): value for path in _leaf_paths(full)
            if not isinstance(value := _at(full, path), dict)}


def _check_task_and_model(recipe: Recipe, path: Path) -> Task:
    if recipe.task not in task_names():
        raise InputError(path, f"task must be one of {', '.join(task_names())}")
    task = get_task(recipe.task)
    name = recipe.model.name
    if not name:
        raise InputError(path, "model.name is required")
    if name not in list_models():
        raise InputError(path, f"model.name: unknown model {name!r}; known models: "
                               f"{', '.join(list_models())}")
    if not task.accepts_model(model_task(name)):
        fitting = [m for m in list_models() if task.accepts_model(model_task(m))]
        raise InputError(path, f"model {name!r} is a {model_task(name)} model, not a "
                               f"{task.name} one; {task.name} models: {', '.join(fitting)}")
    return task
