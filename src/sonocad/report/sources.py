"""What a report reads: a model's evaluation and, where there is one, its training run, checked
once, up front.

Two kinds of folder name one model:

- a run folder (``sonocad train --out RUN``): best.pt, metrics.csv, steps.csv (the per-step
  loss, where the trainer wrote one) and summary.json; its evaluation is ``RUN/eval`` by
  default (``sonocad evaluate ... --out RUN/eval``) or the folder given with ``--eval``;
- an evaluate folder (``sonocad evaluate CKPT|default --out E``): metrics.json, the predictions
  table and provenance.json, which names the checkpoint. Its training run is the checkpoint's
  folder where that holds a training log (``evaluate RUN/best.pt``); the bundled model and a
  loose checkpoint have none, and a checkpoint that is no longer where provenance.json says is
  reported without its card and heatmaps.

Either evaluation holds a segmentation/ and a classification/ part for a multitask model.
Whatever is missing is named in one line before any HTML is drawn.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sonocad.checkpoint import Checkpoint, bundled_checkpoint, load_checkpoint
from sonocad.errors import InputError
from sonocad.io.outputs import PROVENANCE
from sonocad.meta import CheckpointMeta, ModelSpec
from sonocad.predictions import read_predictions

EVALUATION = "metrics.json"
TRAINING_LOGS = ("metrics.csv", "summary.json")
FOLDER_KINDS = ("a `sonocad train --out` run folder, a `sonocad evaluate --out` folder or a "
                "`sonocad train --folds all` folder")


@dataclass(frozen=True)
class Part:
    """One head's evaluation: its task, its metrics.json and the folder with its figures."""

    task: str
    metrics: dict[str, Any]
    folder: Path


@dataclass(frozen=True)
class Run:
    """One model's evaluation, with its checkpoint and training run where they are known."""

    folder: Path | None  # the training run folder; None where the model came without one
    evaluation_dir: Path
    checkpoint: Checkpoint | None  # None: provenance.json names a file that is not there
    history: list[dict[str, float]]  # metrics.csv, one row per validation ([] when absent)
    summary: dict[str, Any]  # summary.json ({} when absent)
    evaluation: dict[str, Any]  # the evaluation's metrics.json
    predictions: list[dict[str, Any]]  # the evaluation's predictions table
    steps: list[dict[str, float]] = field(default_factory=list)  # steps.csv, per-step loss
    provenance: dict[str, Any] = field(default_factory=dict)  # {} for an older evaluation
    label: str | None = None  # the name to show, where not its folder's

    @property
    def name(self) -> str:
        return self.label or (self.folder or self.evaluation_dir).resolve().name

    @property
    def info(self) -> CheckpointMeta:
        """The checkpoint's meta; without a checkpoint, what the evaluation says of it."""
        if self.checkpoint is not None:
            return self.checkpoint.info
        classes = next((part.metrics["class_names"] for part in self.parts
                        if part.metrics.get("class_names")), [])
        return CheckpointMeta(self.evaluation.get("task", "?"),
                              ModelSpec(self.evaluation.get("model", "?")), tuple(classes), {})

    @property
    def model(self) -> str:
        return self.info.model.name

    @property
    def bundled(self) -> bool:
        """Whether provenance.json records the bundled default model."""
        return any(model.get("bundled") for model in self.provenance.get("models", []))

    @property
    def pooled(self) -> bool:
        """Whether the predictions come from several models (cross-validation's out-of-fold
        table, each image scored by the fold model that did not train on it)."""
        return len(self.provenance.get("models", [])) > 1

    @property
    def model_file(self) -> str:
        """The checkpoint the evaluation ran, as a reader would name it."""
        if self.bundled:
            return "the bundled default model"
        files = [model.get("file") for model in self.provenance.get("models", [])]
        return ", ".join(map(str, files)) or str(self.evaluation.get("checkpoint") or "?")

    @property
    def parts(self) -> list[Part]:
        """The segmentation and / or classification evaluations, in the evaluation's order."""
        if "parts" in self.evaluation:
            return [Part(task, metrics, self.evaluation_dir / task)
                    for task, metrics in self.evaluation["parts"].items()]
        return [Part(self.evaluation["task"], self.evaluation, self.evaluation_dir)]


def load_run(folder: str | Path, evaluation_dir: str | Path | None = None) -> Run:
    """Read a run folder and its evaluation (default ``folder/eval``), or an evaluate folder
    with the checkpoint its provenance.json names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, f"no such folder (expected {FOLDER_KINDS})")
    if (folder / "best.pt").is_file():
        return _trained_run(folder, evaluation_dir)
    if (folder / EVALUATION).is_file():
        if evaluation_dir is not None:
            raise InputError(folder, "is an evaluation itself; --eval goes with run folders")
        return load_evaluation(folder)
    raise InputError(folder, f"holds neither best.pt nor {EVALUATION}; expected {FOLDER_KINDS}")


def load_evaluation(folder: Path, name: str | None = None) -> Run:
    """An evaluate folder, its checkpoint found through provenance.json."""
    provenance = _read_provenance(folder)
    metrics = read_json(folder / EVALUATION)
    models = provenance.get("models") or [{"file": metrics.get("checkpoint")}]
    checkpoint = _checkpoint(models[0])
    # One model from a training run's folder: that run's curves belong to this evaluation.
    run = (checkpoint.path.parent if len(models) == 1 and checkpoint is not None
           and checkpoint.path is not None and not models[0].get("bundled")
           and any((checkpoint.path.parent / log).is_file() for log in TRAINING_LOGS)
           else None)
    return _run(run, folder, checkpoint, metrics, provenance, name)


def _trained_run(folder: Path, evaluation_dir: str | Path | None) -> Run:
    checkpoint_path = folder / "best.pt"
    evaluation = Path(evaluation_dir) if evaluation_dir is not None else folder / "eval"
    metrics_path = evaluation / EVALUATION
    if not metrics_path.is_file():
        how = (f"run `sonocad evaluate {checkpoint_path} --data DIR --split FILE:test "
               f"--out {evaluation}`")
        raise InputError(metrics_path, f"no evaluation found; {how}"
                         + ("" if evaluation_dir is not None else " or pass --eval DIR"))
    return _run(folder, evaluation, load_checkpoint(checkpoint_path), read_json(metrics_path),
                _read_provenance(evaluation))


def _run(folder: Path | None, evaluation: Path, checkpoint: Checkpoint | None,
         metrics: dict[str, Any], provenance: dict[str, Any], name: str | None = None) -> Run:
    model = checkpoint.info.model.name if checkpoint is not None else None
    if model is not None and metrics.get("model") not in (None, model):
        raise InputError(evaluation / EVALUATION,
                         f"evaluates {metrics['model']}, but {checkpoint.path} is {model}; is "
                         "--eval in the order of the runs?")
    summary = folder / "summary.json" if folder is not None else None
    return Run(folder=folder, evaluation_dir=evaluation, checkpoint=checkpoint,
               history=read_log(folder / "metrics.csv") if folder is not None else [],
               summary=read_json(summary) if summary is not None and summary.is_file() else {},
               evaluation=metrics, predictions=read_predictions(evaluation / "predictions.csv"),
               steps=read_log(folder / "steps.csv") if folder is not None else [],
               provenance=provenance, label=name)


def _checkpoint(model: dict[str, Any]) -> Checkpoint | None:
    """The checkpoint a provenance.json entry names; None where its file is gone."""
    if model.get("bundled") or model.get("file") == "default":
        return bundled_checkpoint()
    file = model.get("file")
    if not file or not Path(file).is_file() or Path(file).suffix != ".pt":
        return None  # an ONNX file or a moved checkpoint: the evaluation alone is reported
    return load_checkpoint(file)


def _read_provenance(folder: Path) -> dict[str, Any]:
    path = folder / PROVENANCE
    return read_json(path) if path.is_file() else {}


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise InputError(path, "expected a JSON object")
    return value


def read_log(path: Path) -> list[dict[str, float]]:
    """A training log (metrics.csv, steps.csv) as rows of numbers; [] where there is none."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                    for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise InputError(path, f"unreadable training log ({exc})") from None
