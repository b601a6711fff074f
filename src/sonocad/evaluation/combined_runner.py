"""`sonocad combine`: the QIMS 2023 pipeline from a detector's predictions tables to Table 2.

Inputs: two predictions tables from `sonocad evaluate` on a detection checkpoint (one for the
rows to fit on, normally the training subset; one for the rows to test on) and a clinical
table (CSV with ``image_id`` or ``image`` and the `sonocad.models.clinical` columns; a CSV
manifest qualifies). Only lesions (benign / malignant) take part.

Steps, all fitted on the fitting rows only:
1. the image model's threshold: Youden's J of the malignancy score;
2. the clinical MLP; the fitting rows get out-of-fold clinical scores (K-fold, so the combined
   models do not learn from scores of an MLP that saw those very rows), the test rows the
   score of an MLP fitted on all fitting rows;
3. the combined logistic regression and decision tree (`sonocad.evaluation.combined`).
The detector's own scores on its training rows are in-sample (it cannot be refitted K times
here); fitting on a validation subset's table avoids that at the cost of fewer rows.

Outputs in ``out``: one predictions table per model (image_model/, logistic_regression/,
decision_tree/: image_id, patient_id, label, predicted_class, prob_benign / prob_malignant, correct,
the image and clinical scores), which `sonocad compare` reads as classifiers; metrics.json;
table2.txt, the printed table (with the test AUROCs of the image and clinical scores, DeLong
CIs). Synthetic clinical input (``clinical_source`` SYNTHETIC, see
`sonocad.data.clinical_synth`) is named in every one of them: a ``clinical_source`` column, a
metrics.json key and the table's title.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedKFold

from sonocad.data.clinical_synth import SOURCE_COLUMN, SYNTHETIC
from sonocad.data.sample import LESION_CLASSES
from sonocad.errors import InputError
from sonocad.evaluation.combined import (
    COMBINED_KINDS,
    RATES,
    check_lesion_counts,
    fit_combined,
    format_qims_table,
    image_threshold,
    qims_table,
)
from sonocad.evaluation.statistics import delong_auroc
from sonocad.io.atomic import write_json, write_text
from sonocad.io.outputs import claim_output_dir
from sonocad.models.clinical import ClinicalRecord, fit_clinical_model, parse_clinical
from sonocad.predictions import read_predictions, write_predictions
from sonocad.progress import progress

IMAGE_MODEL = "image_model"
SCORE_COLUMN = "malignant_score"  # the detector's image-level malignancy score


@dataclass(frozen=True)
class CombinedResult:
    out_dir: Path
    table: str
    metrics: dict[str, Any]


def run_combined(fit_table: str | Path, test_table: str | Path, clinical_table: str | Path,
                 out: str | Path, *, folds: int = 5, seed: int = 0,
                 overwrite: bool = False) -> CombinedResult:
    """Fit on `fit_table`'s lesions, test on `test_table`'s; write and return Table 2 (`out`
    as every command's, `sonocad.io.outputs`; `overwrite` replaces an earlier combine)."""
    out = claim_output_dir(out, "combine", inputs=[fit_table, test_table, clinical_table],
                           overwrite=overwrite)
    fit_rows, test_rows = _lesions(Path(fit_table)), _lesions(Path(test_table))
    clinical, source = read_clinical_table(Path(clinical_table))
    fit_records = _records(fit_rows, clinical, Path(clinical_table))
    test_records = _records(test_rows, clinical, Path(clinical_table))
    y_fit, y_test = _malignant(fit_rows), _malignant(test_rows)
    image_fit, image_test = _scores(fit_rows), _scores(test_rows)

    check_lesion_counts(y_fit, folds)  # before minutes of fitting, not after
    threshold = image_threshold(y_fit, image_fit)
    clinical_fit, clinical_test = _clinical_scores(fit_records, y_fit, test_records, folds, seed)
    predictions = {IMAGE_MODEL: image_test >= threshold}
    models = {}
    for kind in progress(COMBINED_KINDS, "fitting the combined models", unit="models"):
        models[kind] = fit_combined(kind, image_fit, clinical_fit, y_fit, threshold,
                                    folds=folds, seed=seed)
        predictions[kind] = models[kind].predict(image_test, clinical_test)

    rows = qims_table(y_test, predictions)
    synthetic = " -- clinical factors SYNTHETIC, not patient data" if source == SYNTHETIC else ""
    title = (f"QIMS 2023 Table 2 layout: {len(test_rows)} test lesions "
             f"({int(y_test.sum())} malignant); rates with exact 95 % CIs{synthetic}")
    aurocs = {"image_score": delong_auroc(y_test, image_test),
              "clinical_score": delong_auroc(y_test, clinical_test)}
    text = format_qims_table(rows, title) + "\nAUROC (DeLong 95 % CI): " + ", ".join(
        f"{name.replace('_', ' ')} {a.auroc:.3f} ({a.ci_low:.3f}-{a.ci_high:.3f})"
        for name, a in aurocs.items())
    for name, predicted in predictions.items():
        probability = (models[name].probability(image_test, clinical_test) if name in models
                       else image_test)
        write_predictions(out / name / "predictions", _table_rows(
            test_rows, predicted, probability, image_test, clinical_test, source))
    metrics = {
        "task": "qims2023_combined", SOURCE_COLUMN: source, "fit_table": str(fit_table),
        "test_table": str(test_table), "clinical_table": str(clinical_table),
        "n_fit": len(fit_rows), "n_test": len(test_rows), "folds": folds, "seed": seed,
        "image_threshold": threshold,
        "auroc": {name: vars(a) for name, a in aurocs.items()},
        "combined": {kind: {"fitted_on": m.fitted_on, "threshold": m.threshold}
                     for kind, m in models.items()},
        "table": [{"model": row["model"],
                   **{name: vars(row[name]) for name in RATES},
                   "mcnemar": None if row["mcnemar"] is None else vars(row["mcnemar"])}
                  for row in rows],
    }
    write_json(out / "metrics.json", metrics)
    write_text(out / "table2.txt", text + "\n")
    return CombinedResult(out, text, metrics)


def _table_rows(rows: list[dict[str, Any]], predicted: np.ndarray, probability: np.ndarray,
                image_score: np.ndarray, clinical_score: np.ndarray,
                source: str) -> list[dict[str, Any]]:
    """One model's predictions table over the test lesions; prob_malignant is its malignancy
    probability (the image score for the image model, the fitted estimator's for a combined
    model), so `sonocad compare` reads the table as a benign / malignant classifier."""
    table = []
    for i, row in enumerate(rows):
        malignant = bool(predicted[i])
        table.append({
            "image_id": row["image_id"], "patient_id": row.get("patient_id"),
            "label": row["label"], "predicted_class": LESION_CLASSES[int(malignant)],
            "prob_benign": 1 - float(probability[i]), "prob_malignant": float(probability[i]),
            "correct": int(malignant == (row["label"] == "malignant")),
            SCORE_COLUMN: float(image_score[i]), "clinical_score": float(clinical_score[i]),
            SOURCE_COLUMN: source})
    return table


def read_clinical_table(path: Path) -> tuple[dict[str, dict[str, str]], str]:
    """{image id: cells} from a CSV keyed by ``image_id`` (or a manifest's ``image``), and its
    source: SYNTHETIC when any row says so, else "recorded"."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            key = next((k for k in ("image_id", "image") if k in fields), None)
            if key is None:
                raise InputError(path, "a clinical table needs an image_id (or image) column")
            rows = list(reader)
    except FileNotFoundError:
        raise InputError(path, "no such clinical table") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"unreadable clinical table ({exc})") from None
    synthetic = any((row.get(SOURCE_COLUMN) or "").strip().upper() == SYNTHETIC for row in rows)
    return ({row[key].replace("\\", "/"): row for row in rows},
            SYNTHETIC if synthetic else "recorded")


def _lesions(path: Path) -> list[dict[str, Any]]:
    rows = [r for r in read_predictions(path) if r.get("label") in LESION_CLASSES]
    if not rows:
        raise InputError(path, "has no benign or malignant rows")
    if SCORE_COLUMN not in rows[0]:
        raise InputError(path, f"has no {SCORE_COLUMN} column (evaluate a detection "
                               "checkpoint to make one)")
    return rows


def _records(rows: list[dict[str, Any]], clinical: dict[str, dict[str, str]],
             path: Path) -> list[ClinicalRecord]:
    missing = [r["image_id"] for r in rows if r["image_id"] not in clinical]
    if missing:
        raise InputError(path, f"no clinical row for {len(missing)} image(s), e.g. "
                               f"{missing[0]!r}")
    return [parse_clinical(clinical[r["image_id"]], f"{path}: {r['image_id']}") for r in rows]


def _malignant(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([int(r["label"] == "malignant") for r in rows])


def _scores(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([float(r[SCORE_COLUMN] or 0.0) for r in rows])


def _clinical_scores(records: list[ClinicalRecord], malignant: np.ndarray,
                     test_records: list[ClinicalRecord], folds: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each fitting row's clinical score from an MLP that did not see it, and the test rows'
    from one fitted on every fitting row: `folds` + 1 fits (`check_lesion_counts` saw to
    enough rows of each class for the folds)."""
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(records, malignant)
    fits = [*splits, (np.arange(len(records)), None)]  # None: the final fit, on every row
    fit_scores, test_scores = np.zeros(len(records)), np.zeros(len(test_records))
    for train, held_out in progress(fits, "fitting the clinical model", unit="fits"):
        model = fit_clinical_model([records[i] for i in train], malignant[train], seed=seed)
        if held_out is None:
            test_scores = model.predict_proba(test_records)
        else:
            fit_scores[held_out] = model.predict_proba([records[i] for i in held_out])
    return fit_scores, test_scores
