"""Figures for the report, rendered in memory and inlined as PNG data URIs.

Matplotlib draws on its Agg canvas without pyplot (no global state, no display), as
`tasks.classification_evaluation` does. Raster images (overlays, heatmaps) are shrunk to a
display size first: a report of several runs stays a few megabytes, not hundreds.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from itertools import cycle
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image as PILImage

from sonocad.errors import InputError

MAX_SIDE = 420  # pixels, the longest side of an inlined raster image
PALETTE = ("#2a62b8", "#d1495b", "#2e933c", "#edae49", "#7b4fa0", "#00798c", "#8d6a4f")
LOSS_COLUMNS = {"train_loss": "training", "val_loss": "validation"}
NOT_METRICS = {"epoch", "step", "lr", "seconds", *LOSS_COLUMNS}


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_uri(figure: Figure, dpi: int = 144) -> str:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return png_uri(buffer.getvalue())


def image_uri(pixels: np.ndarray, max_side: int = MAX_SIDE) -> str:
    """A uint8 image array (grey or RGB), shrunk to `max_side`, as a PNG data URI."""
    image = PILImage.fromarray(pixels)
    image.thumbnail((max_side, max_side), PILImage.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return png_uri(buffer.getvalue())


def file_uri(path: Path, max_side: int | None = None) -> str:
    """A PNG file written by `sonocad evaluate`, as it is or shrunk to `max_side`."""
    try:
        if max_side is None:
            return png_uri(path.read_bytes())
        with PILImage.open(path) as image:
            return image_uri(np.asarray(image.convert("RGB")), max_side)
    except (OSError, PILImage.UnidentifiedImageError) as exc:
        raise InputError(path, f"unreadable figure ({exc})") from None


def side_by_side(images: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    """RGB uint8 images of one height, left to right with white gaps (image | heatmap)."""
    height = images[0].shape[0]
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = [part for image in images for part in (spacer, image)][1:]
    return np.concatenate(parts, axis=1)


def training_curves(history: list[dict[str, float]], select_metric: str | None,
                    best_epoch: int | None) -> Figure:
    """Loss (training, validation) and the validation metrics against epoch, side by side;
    the dotted line marks the epoch whose weights are best.pt."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    epochs = [row.get("epoch", math.nan) for row in history]
    logged = list(dict.fromkeys(key for row in history for key in row))
    for axes, columns, title in (
            (loss_axes, {k: v for k, v in LOSS_COLUMNS.items() if k in logged}, "Loss"),
            (metric_axes, {k: k.removeprefix("val_").replace("_", " ") for k in logged
                           if k.startswith("val_") and k not in NOT_METRICS},
             "Validation metrics")):
        for colour, (column, label) in zip(cycle(PALETTE), columns.items()):
            values = [row.get(column, math.nan) for row in history]  # NaN: not logged then
            emphasis = column == f"val_{select_metric}"
            axes.plot(epochs, values, "o-", color=colour, markersize=3.5,
                      linewidth=2.4 if emphasis else 1.5,
                      label=f"{label} (selection)" if emphasis else label)
        if best_epoch is not None:
            axes.axvline(best_epoch, color="#5d6677", linestyle=":", linewidth=1.2)
        axes.set(title=title, xlabel="epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.25)
        axes.spines[["top", "right"]].set_visible(False)
        if columns:  # below the axes: curves fill the whole plot, a legend inside hides some
            axes.legend(fontsize="small", frameon=False, loc="upper center",
                        bbox_to_anchor=(0.5, -0.2), ncol=min(len(columns), 4))
    return figure
