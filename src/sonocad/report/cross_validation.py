"""A cross-validation folder in the report (`sonocad train RECIPE --folds all --out CV`).

CV holds fold0/ .. fold{k-1}/ (one run folder each), oof/ (every image scored by the fold
model that did not train on it, in `sonocad evaluate`'s format) and cv_summary.json (each
fold's selected validation metrics, their mean and SD). The report shows the folds side by
side (their validation metrics, mean and SD, and their training curves) in place of one run's
training, then the pooled out-of-fold evaluation as any evaluation: figures with CIs, tables
and charts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sonocad.errors import InputError
from sonocad.report.charts import fold_curves, x_axis
from sonocad.report.figures import figure_uri
from sonocad.report.html import Html, figure, join, note, number, table, tag
from sonocad.report.sources import EVALUATION, Run, load_evaluation, read_json, read_log
from sonocad.report.values import metric_label

SUMMARY = "cv_summary.json"
POOLED = "oof"


@dataclass(frozen=True)
class CrossValidation:
    folder: Path
    summary: dict[str, Any]  # cv_summary.json
    histories: dict[str, list[dict[str, float]]]  # fold -> its metrics.csv ([] when absent)
    pooled: Run  # the out-of-fold evaluation, named after the folder


def is_cross_validation(folder: Path) -> bool:
    return (folder / SUMMARY).is_file()


def load_cross_validation(folder: Path) -> CrossValidation:
    """Read a `sonocad train --folds all` folder: its summary, folds and pooled evaluation."""
    summary = read_json(folder / SUMMARY)
    folds = summary.get("folds")
    if not isinstance(folds, dict) or not folds:
        raise InputError(folder / SUMMARY, "lists no folds; is it a `sonocad train --folds "
                                           "all` summary?")
    pooled = folder / POOLED
    if not (pooled / EVALUATION).is_file():
        raise InputError(pooled / EVALUATION, "no pooled out-of-fold evaluation (a detector's "
                                              "folds are not pooled); report each fold's "
                                              "`sonocad evaluate` folder instead")
    return CrossValidation(folder, summary,
                           {fold: read_log(folder / fold / "metrics.csv") for fold in folds},
                           load_evaluation(pooled, name=folder.resolve().name))


def folds_block(cv: CrossValidation) -> Html:
    """The folds side by side: what each was selected on, its validation metrics with their
    mean and SD, and every fold's training curves."""
    summary, folds = cv.summary, list(cv.summary["folds"])
    select = summary.get("select_metric")
    per_fold = {fold: summary["folds"][fold] for fold in folds}
    rows = [[metric_label(name),
             *(number(per_fold[fold]["metrics"].get(name)) for fold in folds),
             number(spread.get("mean")), number(spread.get("sd"))]
            for name, spread in summary.get("mean_sd", {}).items()]
    rows += [["Optimiser steps", *(number(per_fold[fold].get("steps")) for fold in folds),
              "", ""],
             ["Minutes", *(number(per_fold[fold].get("minutes"), 1) for fold in folds), "",
              ""]]
    blocks = [
        tag("h3", f"Training: {len(folds)}-fold cross-validation"),
        tag("p", f"Fold i's model trained on the other folds and was selected on fold i "
                 f"(validation {select}); the results below pool every image's prediction by "
                 "the fold model that did not train on it. A fold's images also chose its "
                 "checkpoint, so the out-of-fold figures lean slightly optimistic; a held-out "
                 "test subset gives the final figure."),
        table(["Validation metric", *folds, "Mean", "SD"], rows,
              numeric=range(1, len(folds) + 3),
              caption=f"Each fold's selected weights on its own validation fold ({SUMMARY}); "
                      "mean and SD (n - 1) over the folds"),
    ]
    histories = {fold: history for fold, history in cv.histories.items() if history}
    if histories:
        x = x_axis(list(histories.values()))
        blocks.append(figure(figure_uri(fold_curves(histories, select, x)),
                             "Each fold's training loss (top) and validation "
                             f"{select} (bottom) at each validation (metrics.csv), against "
                             f"{'optimiser steps' if x == 'step' else 'epochs'}.",
                             alt="fold training curves", wide=True))
    else:
        blocks.append(note(f"No fold of {cv.folder} has a metrics.csv: the training curves "
                           "are not available."))
    return join(blocks)
