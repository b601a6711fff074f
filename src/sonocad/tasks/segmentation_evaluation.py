"""Segmentation's evaluation: per-image metrics at each image's own size, their means with
95 % bootstrap CIs (over patients where ids exist) for all, lesion and normal images, the pooled
pixel confusion matrix, lesion-level sensitivity and false lesions per image
(`sonocad.evaluation.lesion_detection`), and overlays (truth green, prediction red) of the
worst, median and best cases. Writes predictions.csv / .json, metrics.json and overlays/ into
``out``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.data.sample import Sample
from sonocad.evaluation.intervals import RULE
from sonocad.evaluation.lesion_detection import lesion_detection_summary, lesion_matches
from sonocad.evaluation.segmentation import (
    SEGMENTATION_METRICS,
    PixelCounts,
    confusion,
    image_metrics,
    summarise,
)
from sonocad.io.atomic import save_png, write_json
from sonocad.io.outputs import output_stem
from sonocad.predictions import prediction_columns, sample_columns, write_predictions
from sonocad.tasks.base import EvaluationResult, Predicted, PredictorLike, predict_samples
from sonocad.visual import PREDICTION_COLOUR, TRUTH_COLOUR, draw_outlines


def evaluate_segmentation(model: PredictorLike, samples: list[Sample], out: Path,
                          split_spec: str, *, overlays: int = 6, batch_size: int = 8,
                          n_boot: int = 2000, checkpoint: str | Path | None = None,
                          predictions: Iterable[Predicted] | None = None) -> EvaluationResult:
    """Score lesion maps against the samples' masks; write the table, metrics and overlays.
    `predictions`: the samples' predictions when the caller already streams them."""
    rows, pooled, cases = [], PixelCounts(0, 0, 0, 0), []
    if predictions is None:
        predictions = predict_samples(model, samples, batch_size)
    for sample, image, prediction in predictions:
        spacing, predicted = image.spacing_mm, prediction.mask
        truth = sample.load_mask(image.pixels.shape[:2])
        truth = truth if truth is not None else np.zeros(predicted.shape, bool)
        metrics = image_metrics(truth, predicted, spacing)
        rows.append({**sample_columns(sample), "truth_lesion": int(truth.any()), **metrics,
                     **lesion_matches(truth, prediction.lesions(spacing)),
                     **prediction_columns(prediction, spacing)})
        pooled = pooled + confusion(truth, predicted)
        cases.append((sample, metrics["dice"]))
    summary = _segmentation_summary(rows, pooled, n_boot)
    summary.update(split=split_spec, model=model.info.model.name,
                   **({"checkpoint": str(checkpoint)} if checkpoint is not None else {}))
    write_predictions(out / "predictions", rows)
    write_json(out / "metrics.json", summary)
    if overlays:
        _write_overlays(model, _pick_cases(cases, overlays), out / "overlays")
    return EvaluationResult(out, rows, summary)


def _segmentation_summary(rows: list[dict[str, Any]], pooled: PixelCounts,
                          n_boot: int) -> dict[str, Any]:
    groups = {
        "all": rows,
        "lesion": [r for r in rows if r["truth_lesion"]],
        "normal": [r for r in rows if not r["truth_lesion"]],
    }
    # Images of one patient are not independent: resample patients where ids exist.
    by_patient = bool(rows) and all(r["patient_id"] for r in rows)
    unit = "patients" if by_patient else "images"
    return {
        "task": "segmentation",
        "n_images": len(rows),
        "reduction": f"per-image metrics averaged over images ({unit} resampled); {RULE}; "
                     "confusion matrix pooled over all pixels",
        "groups": {name: {"n_images": len(group), **summarise(
                       group, SEGMENTATION_METRICS, n_boot=n_boot,
                       group_by="patient_id" if by_patient else None)}
                   for name, group in groups.items() if group},
        "pooled_confusion": {"tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn, "tn": pooled.tn},
        "lesion_detection": {name: dict(stat) for name, stat in lesion_detection_summary(
            rows, groups=[r["patient_id"] for r in rows] if by_patient else None,
            n_boot=n_boot).items()} if rows else {},
    }


def _pick_cases(cases: list[tuple[Sample, float]], count: int) -> list[tuple[str, Sample]]:
    """Worst, median and best lesion cases (by Dice), `count` in all, named by their rank."""
    scored = sorted((c for c in cases if not np.isnan(c[1])), key=lambda c: c[1])
    if not scored:
        return []
    picks = np.unique(np.linspace(0, len(scored) - 1, min(count, len(scored))).round().astype(int))
    return [(f"rank{int(i) + 1:03d}_dice{scored[i][1]:.2f}", scored[i][0]) for i in picks]


def _write_overlays(model: PredictorLike, picks: list[tuple[str, Sample]], folder: Path) -> None:
    for name, sample in picks:
        pixels = sample.load_image().pixels
        truth = sample.load_mask(pixels.shape[:2])
        predicted = model.predict([pixels])[0].mask
        layers = [(predicted, PREDICTION_COLOUR)]
        if truth is not None:
            layers.insert(0, (truth, TRUTH_COLOUR))
        stem = output_stem(Path(sample.image_id).name).replace(" ", "_")
        save_png(folder / f"{name}_{stem}.png", draw_outlines(pixels, layers))
