"""The report's charts: training curves, ROC, confusion matrices and reliability, drawn with
matplotlib on its Agg canvas without pyplot (no global state, no display).

Every chart is as wide as a printed A4 page's text (`WIDTH_IN`) and shown at that width, so its
type prints at its own size (8.5 pt and up) and each chart gets a row of its own. Heatmaps use
predict's colour language (`sonocad.pictures.HEAT_MAP`, inferno, with a colour bar).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import wraps
from itertools import cycle
from typing import Any, ParamSpec

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from sonocad.pictures import HEAT_MAP
from sonocad.report.roc import GRID, Roc

WIDTH_IN = 7.0  # A4's 210 mm less the page margins (report.css: @page), in inches
PALETTE = ("#2a62b8", "#d1495b", "#2e933c", "#edae49", "#7b4fa0", "#00798c", "#8d6a4f")
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8.5,
         "xtick.labelsize": 8.5, "ytick.labelsize": 8.5, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.25}
LOSS_COLUMNS = {"train_loss": "training (mean per validation)", "val_loss": "validation"}
NOT_METRICS = {"epoch", "step", "lr", "seconds", *LOSS_COLUMNS}
MIN_EPOCHS = 3  # fewer validated epochs than this: curves against optimiser steps
POINT_MARKERS = {"class head's call": "o", "final call": "D"}

P = ParamSpec("P")


def _styled(chart: Callable[P, Figure]) -> Callable[P, Figure]:
    """Draw `chart` in the report's style (rcParams apply as the artists are made)."""
    @wraps(chart)
    def styled(*args: P.args, **kwargs: P.kwargs) -> Figure:
        with rc_context(STYLE):
            return chart(*args, **kwargs)
    return styled


def _figure(height_in: float) -> Figure:
    return Figure(figsize=(WIDTH_IN, height_in), layout="constrained")


def x_axis(histories: Sequence[Sequence[dict[str, float]]]) -> str:
    """"epoch", or "step" where a log holds fewer than `MIN_EPOCHS` validated epochs: a short
    run's curve is then more than one point on a fraction of an epoch."""
    fewest = min((len({row.get("epoch") for row in history}) for history in histories
                  if history), default=0)
    return "epoch" if fewest >= MIN_EPOCHS else "step"


@_styled
def training_curves(history: list[dict[str, float]], steps: list[dict[str, float]],
                    select_metric: str | None, best: float | None, x: str) -> Figure:
    """Loss (training per step where steps.csv has it, training and validation per
    validation) above the validation metrics, against `x`; the dotted line marks the weights
    kept as best.pt (at `best` on `x`)."""
    figure = _figure(5.0)
    loss_axes, metric_axes = figure.subplots(2, 1, sharex=True)
    if steps:
        loss_axes.plot([row.get("step", math.nan) for row in steps],
                       [row.get("loss", math.nan) for row in steps], color="#9aa2b1",
                       linewidth=0.8, label="training, each step")
    logged = list(dict.fromkeys(key for row in history for key in row))
    positions = [row.get(x, math.nan) for row in history]
    for axes, columns, title in (
            (loss_axes, {k: v for k, v in LOSS_COLUMNS.items() if k in logged}, "Loss"),
            (metric_axes, {k: k.removeprefix("val_").replace("_", " ") for k in logged
                           if k.startswith("val_") and k not in NOT_METRICS},
             "Validation metrics")):
        for colour, (column, label) in zip(cycle(PALETTE), columns.items()):
            emphasis = column == f"val_{select_metric}"
            axes.plot(positions, [row.get(column, math.nan) for row in history], "o-",
                      color=colour, markersize=3.5, linewidth=2.2 if emphasis else 1.3,
                      label=f"{label} (selection)" if emphasis else label)
        _finish_axes(axes, title, x, best)
    return figure


@_styled
def fold_curves(histories: dict[str, list[dict[str, float]]], select_metric: str | None,
                x: str) -> Figure:
    """Each fold's training loss above its validation `select_metric`, against `x`, one
    colour a fold."""
    figure = _figure(4.6)
    loss_axes, metric_axes = figure.subplots(2, 1, sharex=True)
    for colour, (fold, history) in zip(cycle(PALETTE), histories.items()):
        positions = [row.get(x, math.nan) for row in history]
        for axes, column in ((loss_axes, "train_loss"), (metric_axes, f"val_{select_metric}")):
            axes.plot(positions, [row.get(column, math.nan) for row in history], "o-",
                      color=colour, markersize=3, linewidth=1.3, label=fold)
    _finish_axes(loss_axes, "Training loss", x, None)
    _finish_axes(metric_axes, f"Validation {select_metric or 'metric'} (selection)", x, None)
    return figure


def _finish_axes(axes: Any, title: str, x: str, best: float | None) -> None:
    if best is not None:
        axes.axvline(best, color="#5d6677", linestyle=":", linewidth=1.2)
    axes.set_title(title, loc="left")
    if axes.get_subplotspec().is_last_row():
        axes.set_xlabel("optimiser step" if x == "step" else "epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, _ = axes.get_legend_handles_labels()
    if handles:  # beside the axes: curves fill the whole plot, a legend inside hides some
        axes.legend(frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5),
                    ncol=1 + len(handles) // 9)


@_styled
def roc_chart(curves: Sequence[Roc]) -> Figure:
    """The curves (dashed: benign against malignant) with their 95 % bands and operating
    points; the legend beside the plot names each with its AUROC and CI."""
    figure = _figure(4.2)
    axes, legend_axes = figure.subplots(1, 2, width_ratios=[1, 0.9])
    axes.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    handles = []
    for colour, curve in zip(cycle(PALETTE), curves):
        colour = "black" if curve.pair else colour
        line, = axes.plot(curve.fpr, curve.tpr, "--" if curve.pair else "-", color=colour,
                          linewidth=1.6, label=f"{curve.name}: {_auroc(curve)}")
        if curve.band is not None:
            axes.fill_between(GRID, *curve.band, color=colour, alpha=0.12, linewidth=0)
        for call, (fpr, tpr) in curve.points.items():
            axes.plot(fpr, tpr, POINT_MARKERS[call], color=colour, markersize=6,
                      markeredgecolor="white", markeredgewidth=0.8, zorder=3)
        handles.append(line)
    calls = dict.fromkeys(call for curve in curves for call in curve.points)
    handles += [Line2D([], [], marker=POINT_MARKERS[call], linestyle="", color="#5d6677",
                       label=f"operating point: {call}") for call in calls]
    handles.append(Line2D([], [], color="#5d6677", alpha=0.3, linewidth=6,
                          label="95 % bootstrap band"))
    axes.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title="ROC",
             xlabel="1 - specificity", ylabel="sensitivity")
    legend_axes.axis("off")
    legend_axes.legend(handles=handles, loc="center left", frameon=False, borderaxespad=0)
    return figure


def _auroc(curve: Roc) -> str:
    figure = curve.auroc or {}
    mean, low, high = (figure.get(key) for key in ("mean", "ci_low", "ci_high"))
    if mean is None:
        return "AUROC n/a"
    ci = "" if low is None or high is None or math.isnan(low) else f" ({low:.3f}–{high:.3f})"
    return f"AUROC {mean:.3f}{ci}"


@_styled
def confusion_chart(matrices: dict[str, np.ndarray], labels: Sequence[str]) -> Figure:
    """One confusion matrix per call (rows truth, columns the call), coloured by the share of
    each true class (inferno, with its colour bar) and labelled with counts and shares."""
    figure = _figure(1.3 + 0.62 * len(labels))
    panels = np.atleast_1d(figure.subplots(1, len(matrices)))
    image = None
    for axes, (title, matrix) in zip(panels, matrices.items()):
        totals = matrix.sum(axis=1, keepdims=True)
        share = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
        image = axes.imshow(share, cmap=HEAT_MAP, vmin=0, vmax=1)
        for (row, column), count in np.ndenumerate(matrix):
            axes.text(column, row, f"{count}\n{share[row, column]:.0%}", ha="center",
                      va="center", fontsize=8.5,
                      color="black" if share[row, column] > 0.6 else "white")
        axes.set(title=f"{title} ({int(matrix.sum())} images)", xlabel="predicted",
                 ylabel="true", xticks=range(len(labels)), yticks=range(len(labels)),
                 xticklabels=labels, yticklabels=labels)
        axes.grid(False)
    figure.colorbar(image, ax=list(panels), shrink=0.9, label="share of the true class")
    return figure


@_styled
def reliability_chart(calibration: dict[str, Any], ece: float | None) -> Figure:
    """Accuracy against top-class confidence per bin (left) beside the confidences'
    histogram (right)."""
    figure = _figure(3.0)
    curve, counts = figure.subplots(1, 2)
    curve.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="perfect calibration")
    curve.plot(calibration["confidence"], calibration["accuracy"], "o-", color=PALETTE[0],
               label="model", clip_on=False)
    title = "Reliability" + (f", ECE {ece:.3f}" if ece is not None and not math.isnan(ece)
                             else "")
    curve.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="top-class confidence",
              ylabel="accuracy in bin", title=title)
    curve.legend(loc="upper left", frameon=False)
    counts.stairs(calibration["counts"], calibration["edges"], fill=True, alpha=0.6,
                  color=PALETTE[0])
    counts.set(xlim=(0, 1), xlabel="top-class confidence", ylabel="images",
               title="Confidences")
    return figure
