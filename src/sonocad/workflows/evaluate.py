"""`sonocad evaluate`: score a checkpoint on a frozen subset; write the predictions table.

The task of the checkpoint does the scoring (`sonocad.tasks.Task.evaluate`); this module
picks the subset, the predictor and the output folder, and adds what researchers ask of any
task's table: per-group breakdowns (`--by`), the P(malignant) calibration and reliability curve
(`sonocad.evaluation.malignancy`, malignancy_reliability.png) and, with ``per="patient"``, the
patient-level results (`sonocad.evaluation.patients`, patients.csv).

What each task writes: `sonocad.tasks.segmentation_evaluation` (per-image metrics with CIs,
overlays), `sonocad.tasks.classification_evaluation` (pooled metrics with CIs, ROC, calibration),
`sonocad.tasks.multitask` (both, one table) and `sonocad.tasks.detection_evaluation` (AP).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from sonocad.checkpoint import bundled_checkpoint, load_checkpoint
from sonocad.data.sample import LESION_CLASSES, Sample
from sonocad.data.sources import DataArg, resolve_sources
from sonocad.data.split import resolve_subset, select
from sonocad.errors import InputError, SonocadError
from sonocad.evaluation.breakdown import breakdown
from sonocad.evaluation.figures import reliability_curve_figure, save_figure
from sonocad.evaluation.intervals import RULE as INTERVAL_RULE
from sonocad.evaluation.malignancy import lesion_scores, malignancy_calibration
from sonocad.evaluation.patients import (
    MAX,
    PATIENT_SCORES,
    TABLE,
    patient_level,
    write_patient_table,
)
from sonocad.inference.detection import DetectionPredictor
from sonocad.inference.predictor import Predictor
from sonocad.io.atomic import write_json
from sonocad.io.outputs import claim_output_dir
from sonocad.provenance import model_record, write_provenance
from sonocad.tasks import EvaluationResult, Predicted, get_task, predict_samples

IMAGE, PATIENT = "image", "patient"
PER = (IMAGE, PATIENT)
MALIGNANCY_FIGURE = "malignancy_reliability.png"


def evaluate(checkpoint: str | Path, data: DataArg, split_spec: str | Sequence[str],
             out: str | Path, *, layout: str | None = None, overlays: int = 6,
             batch_size: int = 8, n_boot: int = 2000, by: Sequence[str] = (),
             per: str = IMAGE, patient_score: str = MAX,
             overwrite: bool = False) -> EvaluationResult:
    """Score a checkpoint ("default": the bundled model) on one frozen subset, or on one per
    data source (`data` and `split_spec` in the same order); `by` (any field of the images:
    "source", "scanner", "label" or a clinical field such as BUS-BRA's "birads") adds
    per-group figures beside the pooled ones, per source always when there are several.
    `per="patient"` adds the patient-level results, each patient scored by the `patient_score`
    ("max" or "mean") of their images' P(malignant); refused before anything is predicted
    where no image names a patient. `overwrite` replaces an earlier evaluate output in `out`."""
    if per not in PER:
        raise SonocadError(f"--per {per}: choose {' or '.join(PER)}")
    if patient_score not in PATIENT_SCORES:
        raise SonocadError(f"--patient-score {patient_score}: choose "
                           f"{' or '.join(PATIENT_SCORES)}")
    out = Path(out)
    bundled = str(checkpoint) == "default"
    loaded = bundled_checkpoint() if bundled else load_checkpoint(checkpoint)
    task = get_task(loaded.task)
    specs = [split_spec] if isinstance(split_spec, str) else list(split_spec)
    samples = _subset_samples(data, specs, layout)
    _check_fields(samples, by)
    labels = loaded.info.data.get("labels")
    if labels:
        samples = [s for s in samples if s.label in labels]
    if per == PATIENT:
        _check_patients(samples, " + ".join(specs),
                        loaded.class_names if task.class_scores else None)
    data_paths = [data] if isinstance(data, (str, Path)) else list(data or [])
    claim_output_dir(out, "evaluate", inputs=[*([] if bundled else [checkpoint]), *data_paths],
                     overwrite=overwrite)
    model = DetectionPredictor(loaded) if task.detector else Predictor(loaded)
    write_provenance(out, [model_record(loaded.info, loaded.path, bundled=bundled)], "torch")
    result = task.evaluate(model, samples, out, " + ".join(specs), overlays=overlays,
                           batch_size=batch_size, n_boot=n_boot, checkpoint=checkpoint)
    keys = list(dict.fromkeys([*(["source"] if len(specs) > 1 else []), *by]))
    if keys and not task.detector:  # a detector's AP is not broken down (yet)
        class_names = model.class_names if task.class_scores else None
        result.metrics["breakdowns"] = {key: breakdown(result.rows, key, class_names,
                                                       n_boot=n_boot) for key in keys}
    return _researcher_outputs(result, n_boot,
                               patient_score if per == PATIENT else None)


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
        if (other.task, other.class_names, other.info.model.name) != (
                first.task, first.class_names, first.info.model.name):
            raise InputError(path, "is not the same model and classes as the first fold's")
    task = get_task(first.task)
    if task.detector:
        raise SonocadError("out-of-fold pooling scores one table of predictions; a "
                           "detector's folds are reported one by one")
    out = Path(out)
    folds = [_subset_samples(data, [spec], layout) for spec in split_specs]
    labels = first.info.data.get("labels")
    if labels:
        folds = [[s for s in samples if s.label in labels] for samples in folds]
    claim_output_dir(out, "evaluate", inputs=[*checkpoints, data], overwrite=overwrite)
    write_provenance(out, [model_record(c.info, c.path) for c in loaded], "torch")

    def out_of_fold() -> Iterator[Predicted]:
        for fold, (checkpoint, samples) in enumerate(zip(loaded, folds)):  # one model at a time
            yield from predict_samples(Predictor(checkpoint), samples, batch_size,
                                       f"evaluating fold {fold} on its held-out images")

    samples = [s for fold in folds for s in fold]
    # Overlays are drawn by one predictor, which would not be the one that made each case.
    result = task.evaluate(Predictor(first), samples, out, " + ".join(split_specs),
                           predictions=out_of_fold(), overlays=0, batch_size=batch_size,
                           n_boot=n_boot, checkpoint=", ".join(map(str, checkpoints)))
    return _researcher_outputs(result, n_boot, None)


def _researcher_outputs(result: EvaluationResult, n_boot: int,
                        patient_score: str | None) -> EvaluationResult:
    """metrics.json with the interval rule, the P(malignant) calibration (and its figure)
    where the model scores benign against malignant, and the patient-level results (and
    patients.csv) with a `patient_score`."""
    out = result.out_dir
    result.metrics["intervals"] = INTERVAL_RULE
    scores = lesion_scores(result.rows)
    if scores is not None:
        calibration = malignancy_calibration(scores, n_boot=n_boot) | {
            "figure": MALIGNANCY_FIGURE}
        result.metrics["malignancy_calibration"] = calibration
        save_figure(out / MALIGNANCY_FIGURE, reliability_curve_figure(calibration))
    if patient_score is not None and scores is not None:  # checked before predicting
        figures, table = patient_level(scores, patient_score, n_boot=n_boot)
        result.metrics["patient_level"] = figures | {"table": TABLE}
        write_patient_table(out / TABLE, table)
    write_json(out / "metrics.json", result.metrics)
    return result


def _check_patients(samples: Sequence[Sample], subset: str,
                    class_names: Sequence[str] | None) -> None:
    """A one-line error, before any image is predicted, where `--per patient` cannot be
    answered: no patient ids, no benign or malignant image of one, or a model without a
    benign-vs-malignant score."""
    if not any(sample.patient_id for sample in samples):
        raise SonocadError(f"--per patient: no image of {subset} has a patient id (BUSI has "
                           "none; BUS-BRA has, and a manifest can, in a patient_id column)")
    if not {"benign", "malignant"} <= set(class_names or ()):
        raise SonocadError("--per patient needs a model that scores benign against malignant; "
                           "this one has " + (f"classes {', '.join(class_names)}"
                                              if class_names else "no class head"))
    if not any(s.patient_id and s.label in LESION_CLASSES for s in samples):
        raise SonocadError(f"--per patient: no benign or malignant image of {subset} names a "
                           "patient")


def _check_fields(samples: Sequence[Sample], fields: Sequence[str]) -> None:
    """A one-line error, before any image is predicted, for a `--by` field no image has."""
    known = {"source", "scanner", "label", "patient_id",
             *(name for sample in samples for name in sample.clinical)}
    for field in fields:
        if field not in known:
            raise SonocadError(f"--by {field}: no such field in these images (they have: "
                               f"{', '.join(sorted(known))})")


def _subset_samples(data: DataArg, specs: list[str], layout: str | None) -> list[Sample]:
    """The named subsets' samples, each tagged with its data source."""
    # resolve_sources checks that there is one split per data set.
    sources = resolve_sources(None, data, [spec.rpartition(":")[0] for spec in specs])
    samples: list[Sample] = []
    for source, spec in zip(sources, specs, strict=True):
        split, subset = resolve_subset(spec)
        samples += select(source.open(layout), split.subsets[subset])
    return samples
