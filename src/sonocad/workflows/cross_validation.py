"""K-fold cross-validation: `sonocad train RECIPE --split kfold.json --folds all`.

For a split file of folds ``fold0`` .. ``fold{k-1}`` (`sonocad data split DATA --folds K`),
fold i's model trains on the other folds and is selected on fold i, as nnU-Net's folds are.
Outputs in `out`:

  fold0/ .. fold{k-1}/   one ordinary run folder per fold (best.pt, last.pt, metrics.csv, ...)
  oof/                   the pooled out-of-fold evaluation: every image predicted by the fold
                         model that did not train on it, scored as one predictions table with
                         metrics.json in `sonocad evaluate`'s format (compare and report read it)
  cv_summary.json / .md  per fold its selected validation metrics; per metric mean and SD
                         (n - 1) over the folds

Fold i's images also chose its checkpoint, so out-of-fold figures lean slightly optimistic;
a held-out ``test`` subset in the split file stays untouched for the final figure. ``resume``
continues an interrupted run: finished folds are kept, a fold with a last.pt goes on from it.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonocad.data.split import read_split
from sonocad.engine.recipe import Recipe
from sonocad.engine.trainer import train
from sonocad.errors import InputError
from sonocad.io.atomic import write_json, write_text
from sonocad.io.outputs import claim_output_dir
from sonocad.tasks import get_task
from sonocad.workflows.evaluate import EvaluationResult, evaluate_out_of_fold

COMMAND = "train --folds"


@dataclass(frozen=True)
class CrossValidation:
    out_dir: Path
    folds: list[str]
    summary: dict[str, Any]  # cv_summary.json
    pooled: EvaluationResult | None  # None for detectors (not pooled)


def fold_names(split_path: Path) -> list[str]:
    """The split file's folds in order; an InputError for a file without any."""
    split = read_split(split_path)
    folds = sorted((name for name in split.subsets if name.startswith("fold")),
                   key=lambda name: int(name[4:]) if name[4:].isdigit() else math.inf)
    if len(folds) < 2:
        raise InputError(split_path, "has no K folds (fold0, fold1, ...); make one with "
                                     "`sonocad data split DATA --folds 5 --out kfold.json`")
    return folds


def cross_validate(recipe: Recipe, data: Path, split: Path, out: str | Path, *,
                   resume: bool = False, overwrite: bool = False,
                   n_boot: int = 2000) -> CrossValidation:
    """Train every fold of `split` (one data source), then pool and summarise them."""
    out, folds = Path(out), fold_names(split)
    claim_output_dir(out, COMMAND, inputs=[data, split], overwrite=overwrite, resume=resume)
    summaries = {}
    for fold in folds:
        fold_recipe = recipe.model_copy(deep=True)
        fold_recipe.data.train_subsets = [f for f in folds if f != fold]
        fold_recipe.data.val_subset, fold_recipe.data.sources = fold, None
        run = out / fold
        if not (run / "summary.json").is_file():  # a finished fold is kept on --resume
            print(f"== cross-validation {fold} ({folds.index(fold) + 1} of {len(folds)})",
                  flush=True)
            started = (run / "last.pt").is_file()
            train(fold_recipe, data, split, run, resume=started, overwrite=not started)
        summaries[fold] = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    pooled = None
    if not get_task(recipe.task).detector:  # a detector's AP needs one model's scores
        pooled = evaluate_out_of_fold([out / f / "best.pt" for f in folds], data,
                                      [f"{split}:{f}" for f in folds], out / "oof",
                                      n_boot=n_boot, overwrite=(out / "oof").exists())
    summary = _summary(recipe, summaries, pooled)
    write_json(out / "cv_summary.json", summary)
    write_text(out / "cv_summary.md", summary_table(summary))
    return CrossValidation(out, folds, summary, pooled)


def _summary(recipe: Recipe, summaries: dict[str, dict[str, Any]],
             pooled: EvaluationResult | None) -> dict[str, Any]:
    per_fold = {fold: s["best_metrics"] or {} for fold, s in summaries.items()}
    names = [name for name in next(iter(per_fold.values()))
             if all(isinstance(m.get(name), (int, float)) for m in per_fold.values())]
    spread = {}
    for name in names:
        values = [float(per_fold[fold][name]) for fold in per_fold]
        spread[name] = {"mean": statistics.fmean(values),
                        "sd": statistics.stdev(values) if len(values) > 1 else math.nan}
    return {"task": recipe.task, "model": recipe.model.name,
            "select_metric": next(iter(summaries.values()))["select_metric"],
            "folds": {fold: {"metrics": per_fold[fold], "steps": summaries[fold]["steps"],
                             "minutes": summaries[fold]["minutes"]} for fold in per_fold},
            "mean_sd": spread,
            "pooled_out_of_fold": (str(pooled.out_dir / "predictions.csv")
                                   if pooled is not None else None)}


def summary_table(summary: dict[str, Any]) -> str:
    """Markdown: one row per validation metric, each fold's value, mean and SD."""
    folds = list(summary["folds"])
    lines = [f"# Cross-validation: {summary['model']} ({summary['task']}, {len(folds)} folds)",
             "", f"Selected on each fold's {summary['select_metric']}; out-of-fold table: "
             f"{summary['pooled_out_of_fold'] or 'not pooled (detector)'}", "",
             "| metric | " + " | ".join(folds) + " | mean | SD |",
             "| --- |" + " ---: |" * (len(folds) + 2)]
    for name, stat in summary["mean_sd"].items():
        values = [summary["folds"][fold]["metrics"][name] for fold in folds]
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in values)
                     + f" | {stat['mean']:.4f} | {stat['sd']:.4f} |")
    return "\n".join(lines) + "\n"
