"""Classification's evaluation: the predictions table, metrics with CIs, and figures.

Outputs in ``out``: predictions.csv / predictions.json (one row per image: ids, true and
predicted label, one probability column per class, correct), metrics.json (pooled metrics with
95 % bootstrap CIs over patients where ids exist, else images; confusion matrix; ROC points;
calibration) and confusion_matrix.png, roc.png, reliability.png.

metrics.json keeps the segmentation layout (``groups`` -> ``all`` -> metric -> mean / ci_low /
ci_high / n / n_excluded), so `sonocad.evaluation.summary.format_summary` and reports read
both tasks alike; here ``mean`` is the estimate on the whole subset.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from sonocad.data.sample import Sample
from sonocad.errors import SonocadError
from sonocad.evaluation.classification import BENIGN_VS_MALIGNANT, classification_metrics
from sonocad.evaluation.figures import save_figure
from sonocad.evaluation.intervals import RULE
from sonocad.io.atomic import write_json
from sonocad.predictions import prediction_columns, sample_columns, write_predictions
from sonocad.tasks.base import EvaluationResult, Predicted, PredictorLike, predict_samples


def evaluate_classification(model: PredictorLike, samples: list[Sample], out: str | Path,
                            split_spec: str, *, n_boot: int = 2000, batch_size: int = 8,
                            checkpoint: str | Path | None = None,
                            predictions: Iterable[Predicted] | None = None) -> EvaluationResult:
    """Score a classifier on labelled samples and write the tables, metrics and figures.
    `predictions`: the samples' predictions when the caller already has them."""
    out = Path(out)
    class_names = model.class_names
    _check_labels(samples, class_names, split_spec)
    rows, probs = [], []
    if predictions is None:
        predictions = predict_samples(model, samples, batch_size)
    for sample, image, prediction in predictions:
        probabilities = prediction.class_probabilities
        spacing = image.spacing_mm if image is not None else None
        rows.append({**sample_columns(sample), **prediction_columns(prediction, spacing),
                     "correct": int(prediction.predicted_class == sample.label)})
        probs.append([probabilities[name] for name in class_names])
    # Images of one patient are not independent: resample patients where ids exist.
    by_patient = all(row["patient_id"] for row in rows)
    result = classification_metrics(
        [class_names.index(row["label"]) for row in rows], probs, class_names,
        groups=[row["patient_id"] for row in rows] if by_patient else None, n_boot=n_boot)
    summary = {
        "task": "classification",
        "n_images": len(rows),
        "reduction": "metrics pooled over all images ('mean' is the estimate on the whole "
                     "subset); one-vs-rest AUROC, macro = unweighted mean over classes; "
                     f"top-label ECE in {result['calibration']['n_bins']} equal-width bins; "
                     f"{RULE} ({n_boot} resamples over "
                     f"{'patients' if by_patient else 'images'}; those in which a metric is "
                     "undefined are left out of its CI)",
        "model": model.info.model.name,
        "split": split_spec,
        **({"checkpoint": str(checkpoint)} if checkpoint is not None else {}),
        "class_names": class_names,
        "support": result["support"],
        "groups": {"all": {"n_images": len(rows), **result["metrics"]}},
        "confusion_matrix": result["confusion_matrix"],
        "roc": result["roc"],
        "calibration": result["calibration"],
    }
    write_predictions(out / "predictions", rows)
    write_json(out / "metrics.json", summary)
    save_figure(out / "confusion_matrix.png", confusion_figure(summary["confusion_matrix"]))
    save_figure(out / "roc.png", roc_figure(summary["roc"]))
    save_figure(out / "reliability.png",
          reliability_figure(summary["calibration"], summary["groups"]["all"]["ece"]["mean"]))
    return EvaluationResult(out, rows, summary)


def confusion_figure(confusion: dict[str, Any]) -> Figure:
    """Counts, rows truth and columns prediction, as in metrics.json."""
    labels = confusion["labels"]
    side = 1.2 + 0.9 * len(labels)
    figure = Figure(figsize=(side, side), layout="constrained")
    axes = figure.subplots()
    ConfusionMatrixDisplay(np.array(confusion["matrix"]), display_labels=labels).plot(
        ax=axes, cmap="Blues", colorbar=False, values_format="d")
    axes.set(xlabel="predicted", ylabel="true",
             title=f"Confusion matrix ({int(np.sum(confusion['matrix']))} images)")
    return figure


def roc_figure(curves: dict[str, dict[str, Any]]) -> Figure:
    """One-vs-rest ROC per class (solid) and benign vs malignant (dashed), AUROC in the legend."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], ":", color="grey", linewidth=1)
    for name, curve in curves.items():
        pair = name == BENIGN_VS_MALIGNANT
        style = {"linestyle": "--", "color": "black"} if pair else {}
        axes.plot(curve["fpr"], curve["tpr"], **style,
                  label=f"{name.replace('_', ' ')} (AUROC {curve['auroc']:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal", title="ROC",
             xlabel="1 - specificity (false-positive rate)",
             ylabel="sensitivity (true-positive rate)")
    axes.legend(loc="lower right", fontsize="small")
    return figure


def reliability_figure(calibration: dict[str, Any], ece: float) -> Figure:
    """Accuracy against top-class confidence per bin, over a histogram of the confidences."""
    figure = Figure(figsize=(5, 6), layout="constrained")
    curve, counts = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    curve.plot([0, 1], [0, 1], ":", color="grey", linewidth=1, label="perfect calibration")
    curve.plot(calibration["confidence"], calibration["accuracy"], "o-", label="model",
               clip_on=False)
    curve.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="accuracy in bin",
              title=f"Reliability (top-class confidence), ECE {ece:.3f}")
    curve.legend(loc="upper left", fontsize="small")
    counts.stairs(calibration["counts"], calibration["edges"], fill=True, alpha=0.6)
    counts.set(xlabel="top-class confidence", ylabel="images")
    return figure


def _check_labels(samples: list[Sample], class_names: list[str], split_spec: str) -> None:
    if not samples:
        raise SonocadError(f"{split_spec}: no images to evaluate")
    unlabelled = sum(s.label is None for s in samples)
    if unlabelled:
        raise SonocadError(f"{split_spec}: {unlabelled} image(s) have no label; scoring a "
                           "classifier needs one for every image")
    unknown = sorted({s.label for s in samples} - set(class_names))
    if unknown:
        raise SonocadError(f"{split_spec}: images labelled {', '.join(unknown)}, which the "
                           f"model does not predict (its classes: {', '.join(class_names)})")
