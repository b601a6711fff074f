"""What a report reads: a training run folder and its evaluation, checked once, up front.

A run folder (``sonocad train --out RUN``) holds best.pt, metrics.csv and summary.json; its
evaluation (``sonocad evaluate ... --out RUN/eval`` by default) holds metrics.json and the
predictions table, with a segmentation/ and a classification/ part for a multitask model.
Whatever is missing is named in one line before any HTML is drawn; only the training log is
optional, so a checkpoint that came without one can still be reported.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonocad.checkpoint import Checkpoint, load_checkpoint
from sonocad.errors import InputError
from sonocad.predictions import read_predictions


@dataclass(frozen=True)
class Part:
    """One head's evaluation: its task, its metrics.json and the folder with its figures."""

    task: str
    metrics: dict[str, Any]
    folder: Path


@dataclass(frozen=True)
class Run:
    folder: Path
    evaluation_dir: Path
    checkpoint: Checkpoint
    history: list[dict[str, float]]  # metrics.csv, one row per validation ([] when absent)
    summary: dict[str, Any]  # summary.json ({} when absent)
    evaluation: dict[str, Any]  # the evaluation's metrics.json
    predictions: list[dict[str, Any]]  # the evaluation's predictions table

    @property
    def meta(self) -> dict[str, Any]:
        return self.checkpoint.meta

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    @property
    def model(self) -> str:
        return self.meta["model"]["name"]

    @property
    def parts(self) -> list[Part]:
        """The segmentation and / or classification evaluations, in the evaluation's order."""
        if "parts" in self.evaluation:
            return [Part(task, metrics, self.evaluation_dir / task)
                    for task, metrics in self.evaluation["parts"].items()]
        return [Part(self.evaluation["task"], self.evaluation, self.evaluation_dir)]


def load_run(folder: str | Path, evaluation_dir: str | Path | None = None) -> Run:
    """Read a run folder and its evaluation (default ``folder/eval``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "no such run folder (expected a `sonocad train --out` folder)")
    checkpoint_path = folder / "best.pt"
    if not checkpoint_path.is_file():
        raise InputError(checkpoint_path, "missing; is this a `sonocad train` run folder?")
    evaluation = Path(evaluation_dir) if evaluation_dir is not None else folder / "eval"
    metrics_path = evaluation / "metrics.json"
    if not metrics_path.is_file():
        how = (f"run `sonocad evaluate {checkpoint_path} --data DIR --split FILE:test "
               f"--out {evaluation}`")
        raise InputError(metrics_path, f"no evaluation found; {how}"
                         + ("" if evaluation_dir is not None else " or pass --eval DIR"))
    checkpoint = load_checkpoint(checkpoint_path)
    metrics = read_json(metrics_path)
    model = checkpoint.meta["model"]["name"]
    if metrics.get("model") not in (None, model):
        raise InputError(metrics_path, f"evaluates {metrics['model']}, but {checkpoint_path} "
                                       f"is {model}; is --eval in the order of the runs?")
    summary_path = folder / "summary.json"
    return Run(folder=folder, evaluation_dir=evaluation, checkpoint=checkpoint,
               history=_read_history(folder / "metrics.csv"),
               summary=read_json(summary_path) if summary_path.is_file() else {},
               evaluation=metrics, predictions=read_predictions(evaluation / "predictions.csv"))


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


def _read_history(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return [{key: float(value) for key, value in row.items() if value not in ("", None)}
                    for row in csv.DictReader(handle)]
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise InputError(path, f"unreadable training log ({exc})") from None
