"""`sonocad evaluate`: score a checkpoint on a frozen subset; write the predictions table.

Outputs in ``--out``: predictions.csv / predictions.json (one row per image), metrics.json
(means with 95 % bootstrap CIs over images, reported for all images, lesion images and normal
images separately, plus the pooled pixel confusion matrix), and overlays/ (truth in green,
prediction in red) for the worst, median and best cases.

A multitask model (lesion map and class) is scored as both: the segmentation outputs go to
``--out``/segmentation, the classification outputs (evaluation.classification_runner) to
``--out``/classification, and ``--out`` holds one predictions table with both sets of columns
and a metrics.json whose ``parts`` are the two metrics files. The model runs once per image:
the segmentation pass keeps the (small) class probabilities for the classification part.
A detector is scored by `sonocad.evaluation.detection_runner` (AP, image-level AUROC,
instance outlines).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.data.sample import Sample
from sonocad.data.sources import DataArg, resolve_sources
from sonocad.data.split import resolve_subset, select
from sonocad.engine.checkpoint import load_checkpoint
from sonocad.errors import InputError, SonocadError
from sonocad.evaluation.breakdown import breakdown
from sonocad.evaluation.measure import lesion_measurements
from sonocad.evaluation.segmentation import (
    SEGMENTATION_METRICS,
    PixelCounts,
    confusion,
    image_metrics,
    summarise,
)
from sonocad.evaluation.table import sample_columns, write_predictions
from sonocad.inference.predictor import Prediction, Predictor
from sonocad.io.atomic import save_png, write_json
from sonocad.io.images import Image
from sonocad.io.outputs import claim_output_dir
from sonocad.progress import progress
from sonocad.visual import PREDICTION_COLOUR, TRUTH_COLOUR, draw_outlines

# (sample, its image or None where it is no longer needed, the model's prediction)
Predicted = tuple[Sample, Image | None, Prediction]


@dataclass(frozen=True)
class EvaluationResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    metrics: dict[str, Any]


def evaluate(checkpoint: str | Path, data: DataArg, split_spec: str | Sequence[str],
             out: str | Path, *, layout: str | None = None, overlays: int = 6,
             batch_size: int = 8, n_boot: int = 2000,
             by: Sequence[str] = (), overwrite: bool = False) -> EvaluationResult:
    """Score a checkpoint on one frozen subset, or on one per data source (`data` and
    `split_spec` in the same order); `by` ("source", "scanner") adds per-group figures beside
    the pooled ones, per source always when there are several. `overwrite` replaces an
    earlier evaluate output in `out`."""
    out = Path(out)
    loaded = load_checkpoint(checkpoint)
    specs = [split_spec] if isinstance(split_spec, str) else list(split_spec)
    samples = _subset_samples(data, specs, layout)
    data_paths = [data] if isinstance(data, (str, Path)) else list(data or [])
    claim_output_dir(out, "evaluate", inputs=[checkpoint, *data_paths], overwrite=overwrite)
    spec_text = " + ".join(specs)
    labels = loaded.meta["data"].get("labels")
    if labels:
        samples = [s for s in samples if s.label in labels]
    if loaded.task == "detection":
        from sonocad.evaluation.detection_runner import evaluate_detection
        from sonocad.inference.detection import DetectionPredictor

        return evaluate_detection(DetectionPredictor(loaded), samples, out, spec_text,
                                  batch_size=batch_size, n_boot=n_boot, examples=overlays,
                                  checkpoint=checkpoint)
    predictor = Predictor(loaded)
    result = _score(predictor, samples, out, spec_text, None, overlays=overlays,
                    batch_size=batch_size, n_boot=n_boot, checkpoint=checkpoint)
    keys = list(dict.fromkeys([*(["source"] if len(specs) > 1 else []), *by]))
    if keys:
        class_names = None if predictor.task == "segmentation" else predictor.class_names
        result.metrics["breakdowns"] = {key: breakdown(result.rows, key, class_names,
                                                       n_boot=n_boot) for key in keys}
        write_json(out / "metrics.json", result.metrics)
    return result


def evaluate_out_of_fold(checkpoints: Sequence[str | Path], data: str | Path,
                         split_specs: Sequence[str], out: str | Path, *,
                         layout: str | None = None, batch_size: int = 8, n_boot: int = 2000,
                         overwrite: bool = False) -> EvaluationResult:
    """Cross-validation's pooled evaluation: checkpoint i predicts subset `split_specs[i]`
    (the fold it did not train on), and all those predictions are scored as one table, in
    `evaluate`'s format (so `compare` and `report` read it). One data set; checkpoints of one
    model and classes. Detectors are not pooled (their AP needs one model's scores)."""
    if len(checkpoints) != len(split_specs) or not checkpoints:
        raise SonocadError("give one checkpoint per fold subset")
    loaded = [load_checkpoint(path) for path in checkpoints]
    first = loaded[0]
    for path, other in zip(checkpoints, loaded):
        if (other.task, other.class_names, other.meta["model"]["name"]) != (
                first.task, first.class_names, first.meta["model"]["name"]):
            raise InputError(path, "is not the same model and classes as the first fold's")
    if first.task == "detection":
        raise SonocadError("out-of-fold pooling scores segmentation, classification and "
                           "multitask models; a detector's folds are reported one by one")
    out = Path(out)
    folds = [_subset_samples(data, [spec], layout) for spec in split_specs]
    labels = first.meta["data"].get("labels")
    if labels:
        folds = [[s for s in samples if s.label in labels] for samples in folds]
    claim_output_dir(out, "evaluate", inputs=[*checkpoints, data], overwrite=overwrite)

    def out_of_fold() -> Iterator[Predicted]:
        for checkpoint, samples in zip(loaded, folds):  # one model in memory at a time
            yield from predict_samples(Predictor(checkpoint), samples, batch_size)

    # Overlays are drawn by one predictor, which would not be the one that made each case.
    return _score(Predictor(first), [s for samples in folds for s in samples], out,
                  " + ".join(split_specs), out_of_fold(), overlays=0, batch_size=batch_size,
                  n_boot=n_boot, checkpoint=", ".join(map(str, checkpoints)))


def _score(predictor: Predictor, samples: list[Sample], out: Path, spec_text: str,
           predictions: Iterable[Predicted] | None, *, overlays: int, batch_size: int,
           n_boot: int, checkpoint: str | Path) -> EvaluationResult:
    """Score `samples` by task; `predictions` (in `samples` order) when the caller has them,
    else `predictor` makes them."""
    # Imported here: the task runners build on this module (EvaluationResult, predict_samples).
    from sonocad.evaluation.classification_runner import evaluate_classification

    options = {"batch_size": batch_size, "n_boot": n_boot, "checkpoint": checkpoint,
               "predictions": predictions}
    if predictor.task == "classification":
        return evaluate_classification(predictor, samples, out, spec_text, **options)
    if predictor.task == "segmentation":
        return evaluate_segmentation(predictor, samples, out, spec_text, **options,
                                     overlays=overlays)
    return _evaluate_multitask(predictor, samples, out, spec_text, options, overlays=overlays)


def _subset_samples(data: DataArg, specs: list[str], layout: str | None) -> list[Sample]:
    """The named subsets' samples, each tagged with its data source."""
    # resolve_sources checks that there is one split per data set.
    sources = resolve_sources(None, data, [spec.rpartition(":")[0] for spec in specs])
    samples: list[Sample] = []
    for source, spec in zip(sources, specs, strict=True):
        split, subset = resolve_subset(spec)
        samples += select(source.open(layout), split.subsets[subset])
    return samples


def _evaluate_multitask(predictor: Predictor, samples: list[Sample], out: Path,
                        split_spec: str, options: dict[str, Any], *,
                        overlays: int) -> EvaluationResult:
    from sonocad.evaluation.classification_runner import evaluate_classification

    options = dict(options)
    given, checkpoint = options.pop("predictions"), options["checkpoint"]
    class_only: list[Predicted] = []  # lesion maps are large; keep only class probabilities

    def recording() -> Iterator[Predicted]:
        made = (given if given is not None
                else predict_samples(predictor, samples, options["batch_size"]))
        for sample, image, prediction in made:
            class_only.append((sample, None, Prediction(None, prediction.class_probabilities,
                                                         prediction.decision)))
            yield sample, image, prediction

    segmentation = evaluate_segmentation(predictor, samples, out / "segmentation", split_spec,
                                         **options, overlays=overlays,
                                         predictions=recording())
    classification = evaluate_classification(predictor, samples, out / "classification",
                                             split_spec, **options, predictions=class_only)
    rows = [{**seg, **{k: v for k, v in cls.items() if k not in seg}}
            for seg, cls in zip(segmentation.rows, classification.rows, strict=True)]
    summary = {"task": "multitask", "model": predictor.meta["model"]["name"],
               "split": split_spec, "checkpoint": str(checkpoint), "n_images": len(rows),
               "parts": {"segmentation": segmentation.metrics,
                         "classification": classification.metrics}}
    write_predictions(out / "predictions", rows)
    write_json(out / "metrics.json", summary)
    return EvaluationResult(out, rows, summary)


def evaluate_segmentation(predictor: Predictor, samples: list[Sample], out: Path,
                          split_spec: str, *, overlays: int = 6, batch_size: int = 8,
                          n_boot: int = 2000, checkpoint: str | Path | None = None,
                          predictions: Iterable[Predicted] | None = None) -> EvaluationResult:
    """Score lesion maps against the samples' masks; write the table, metrics and overlays.
    `predictions`: the samples' predictions when the caller already streams them."""
    rows, pooled, cases = [], PixelCounts(0, 0, 0, 0), []
    if predictions is None:
        predictions = predict_samples(predictor, samples, batch_size)
    for sample, image, prediction in predictions:
        spacing, predicted = image.spacing_mm, prediction.mask
        truth = sample.load_mask(image.pixels.shape[:2])
        truth = truth if truth is not None else np.zeros(predicted.shape, bool)
        metrics = image_metrics(truth, predicted, spacing)
        sizes = {f"pred_{k}": v for k, v in lesion_measurements(predicted, spacing).items()}
        rows.append({**sample_columns(sample), "truth_lesion": int(truth.any()), **metrics,
                     **sizes})
        pooled = pooled + confusion(truth, predicted)
        cases.append((sample, metrics["dice"]))
    summary = _segmentation_summary(rows, pooled, n_boot)
    summary.update(split=split_spec, model=predictor.meta["model"]["name"],
                   **({"checkpoint": str(checkpoint)} if checkpoint is not None else {}))
    write_predictions(out / "predictions", rows)
    write_json(out / "metrics.json", summary)
    if overlays:
        _write_overlays(predictor, _pick_cases(cases, overlays), out / "overlays")
    return EvaluationResult(out, rows, summary)


def predict_samples(predictor: Predictor, samples: list[Sample],
                    batch_size: int) -> Iterator[Predicted]:
    """Stream (sample, image, prediction) in batches; memory stays flat."""
    for start in progress(range(0, len(samples), batch_size), "evaluating",
                          total=-(-len(samples) // batch_size)):
        chunk = samples[start:start + batch_size]
        images = [sample.load_image() for sample in chunk]
        yield from zip(chunk, images, predictor.predict([image.pixels for image in images]))


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
        "reduction": f"per-image metrics averaged over images; 95 % percentile bootstrap CIs "
                     f"over {unit}; confusion matrix pooled over all pixels",
        "groups": {name: {"n_images": len(group), **summarise(
                       group, SEGMENTATION_METRICS, n_boot=n_boot,
                       group_by="patient_id" if by_patient else None)}
                   for name, group in groups.items() if group},
        "pooled_confusion": {"tp": pooled.tp, "fp": pooled.fp, "fn": pooled.fn, "tn": pooled.tn},
    }


def _pick_cases(cases: list[tuple[Sample, float]], count: int) -> list[tuple[str, Sample]]:
    """Worst, median and best lesion cases (by Dice), `count` in all, named by their rank."""
    scored = sorted((c for c in cases if not np.isnan(c[1])), key=lambda c: c[1])
    if not scored:
        return []
    picks = np.unique(np.linspace(0, len(scored) - 1, min(count, len(scored))).round().astype(int))
    return [(f"rank{int(i) + 1:03d}_dice{scored[i][1]:.2f}", scored[i][0]) for i in picks]


def _write_overlays(predictor: Predictor, picks: list[tuple[str, Sample]], folder: Path) -> None:
    for name, sample in picks:
        pixels = sample.load_image().pixels
        truth = sample.load_mask(pixels.shape[:2])
        predicted = predictor.predict([pixels])[0].mask
        layers = [(predicted, PREDICTION_COLOUR)]
        if truth is not None:
            layers.insert(0, (truth, TRUTH_COLOUR))
        stem = Path(sample.image_id).stem.replace(" ", "_")
        save_png(folder / f"{name}_{stem}.png", draw_outlines(pixels, layers))
