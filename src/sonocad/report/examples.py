"""Heatmap examples: where a model looked on a few of the images it was evaluated on.

A classifier's heatmap is the Grad-CAM of its predicted class; a segmentation or multitask
model's is its lesion probability (`explain.runner.Explainer` decides). The images come from
the evaluation's predictions table (``image_id``) looked up in the data set the evaluation
read, one class after another so that every class shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain, zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.data.sample import Sample
from sonocad.errors import InputError
from sonocad.explain.runner import Explainer
from sonocad.pictures import heatmap_picture
from sonocad.report.figures import side_by_side
from sonocad.report.sources import Run
from sonocad.visual import to_rgb8


@dataclass(frozen=True)
class Example:
    picture: np.ndarray  # RGB uint8: the image, then its heatmap
    caption: str
    method: str  # "gradcam" or "lesion_probability"


def explain_examples(run: Run, samples: dict[str, Sample], data: Path,
                     count: int) -> list[Example]:
    """Heatmaps of `count` evaluated images found in `samples` (the data set at `data`)."""
    rows = [row for row in run.predictions if row["image_id"] in samples]
    if not rows:
        raise InputError(data, f"holds none of the images {run.evaluation_dir} evaluated (e.g. "
                               f"{run.predictions[0]['image_id']!r}); give --data the data set "
                               "the evaluation read")
    explainer = Explainer(run.checkpoint)
    examples = []
    for row in pick_rows(rows, count, run.checkpoint.class_names):
        pixels = samples[row["image_id"]].load_image().pixels
        explanation = explainer(pixels)
        caption = f"{row['image_id']}: truth {row.get('label') or 'unlabelled'}"
        if explanation.predicted_class is not None:
            caption += (f", predicted {explanation.predicted_class} "
                        f"(p = {explanation.probability:.2f})")
        if row.get("dice") is not None:
            caption += f", Dice {row['dice']:.2f}"
        picture = side_by_side([to_rgb8(pixels),
                                heatmap_picture(pixels, explanation.heat, explanation.label)])
        examples.append(Example(picture, caption, explanation.method))
    return examples


def pick_rows(rows: list[dict[str, Any]], count: int,
              class_names: list[str]) -> list[dict[str, Any]]:
    """`count` rows taking the classes in turn (in the model's class order), so each shows."""
    by_label: dict[Any, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row.get("label"), []).append(row)
    order = sorted(by_label, key=lambda label: (label not in class_names,
                                                class_names.index(label)
                                                if label in class_names else 0, str(label)))
    turns = chain.from_iterable(zip_longest(*(by_label[label] for label in order)))
    return [row for row in turns if row is not None][:count]
