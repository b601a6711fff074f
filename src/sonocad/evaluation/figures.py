"""The evaluation's matplotlib figures that are not one task's own, and writing any of them as
PNG files."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sonocad.io.atomic import write_bytes


def save_figure(path: Path, figure: Figure, dpi: int = 150) -> None:
    """Render in memory with Agg, then write atomically: no pyplot state, no half-written PNG."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    write_bytes(path, buffer.getvalue())


def reliability_curve_figure(calibration: dict[str, Any]) -> Figure:
    """Observed share of malignant lesions against the mean P(malignant) per bin, with its exact
    95 % CI, over the bins' image counts; the diagonal is perfect calibration. Full page width
    (10 in), so the counts and the labels stay legible in a report."""
    curve = calibration["reliability"]
    edges = curve["edges"]
    filled = [k for k, count in enumerate(curve["counts"]) if count]
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], ":", color="grey", linewidth=1.2, label="perfect calibration")
    predicted = [curve["predicted"][k] for k in filled]
    observed = [curve["observed"][k] for k in filled]
    errors = [[observed[j] - curve["ci_low"][k] for j, k in enumerate(filled)],
              [curve["ci_high"][k] - observed[j] for j, k in enumerate(filled)]]
    top.errorbar(predicted, observed, yerr=errors, fmt="o-", capsize=3, clip_on=False,
                 label="observed (exact 95 % CI)")
    slope, brier = calibration["calibration_slope"]["mean"], calibration["brier"]["mean"]
    top.set(xlim=(0, 1), ylim=(0, 1.02), ylabel="malignant share in bin",
            title=f"Reliability of {calibration['score']}: {calibration['n_images']} benign and "
                  f"malignant images, slope {_number(slope)}, Brier {_number(brier)}")
    top.legend(loc="upper left")
    bottom.stairs(curve["counts"], edges, fill=True, alpha=0.6)
    for k in filled:  # the count over each bar: how much each point rests on
        bottom.annotate(str(curve["counts"][k]), ((edges[k] + edges[k + 1]) / 2,
                                                  curve["counts"][k]),
                        ha="center", va="bottom", fontsize="small")
    bottom.set(xlabel=f"predicted P(malignant), {curve['n_bins']} equal-width bins",
               ylabel="images", ylim=(0, max(curve["counts"]) * 1.3))
    return figure


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f}"
