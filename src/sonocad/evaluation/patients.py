"""Patient-level results: one call per patient, made from their lesion images.

A clinic decides per patient, not per image. A patient is malignant when any of their images is
(histology of any lesion). Their score combines the P(malignant) of their benign and malignant
images (`evaluation.malignancy`):

- ``max`` (the default): the most suspicious image decides. One malignant lesion makes the
  patient malignant, so a patient's score should not fall because their other images look
  benign; the mean would dilute a malignant lesion among benign views or benign lesions;
- ``mean``: the average, for models whose per-image scores are noisy views of one lesion.

The figures, each over patients (an image without a patient id is left out and counted):
the benign-vs-malignant AUROC of the patient scores with a percentile bootstrap CI over
patients; sensitivity (malignant patients called malignant) and specificity (benign patients
called benign) at the model's own operating point, a score of at least `THRESHOLD` (P(malignant)
at least P(benign) for a raw class head; even odds for a calibrated ``p_malignant``); and, for a
model with a rule-out point, its sensitivity and specificity per patient (a patient is spared
the biopsy only when every one of their lesion images is ruled out). Intervals follow
`evaluation.intervals`: exact for small counts, none for an AUROC of a few patients. Patient
ids are per data source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.evaluation.bootstrap import bootstrap_indices, percentile_interval
from sonocad.evaluation.classification import rank_auroc
from sonocad.evaluation.intervals import auroc_interval, metric_summary
from sonocad.evaluation.malignancy import LesionScores
from sonocad.evaluation.segmentation import summarise
from sonocad.io.atomic import write_text
from sonocad.predictions import csv_text

MAX, MEAN = "max", "mean"
AGGREGATES = {MAX: np.max, MEAN: np.mean}
PATIENT_SCORES = tuple(AGGREGATES)
THRESHOLD = 0.5
TABLE = "patients.csv"
TABLE_COLUMNS = ("source", "patient_id", "label", "n_images", "n_malignant_images", "score",
                 "called", "ruled_out", "image_ids")
RATES = ("sensitivity", "specificity", "rule_out_sensitivity", "rule_out_specificity")


def patient_table(scores: LesionScores, how: str = MAX) -> list[dict[str, Any]]:
    """One row per patient (source, patient id) of the rows that name one, in the order of
    their first image."""
    if how not in PATIENT_SCORES:
        raise ValueError(f"patient score must be one of {', '.join(PATIENT_SCORES)}, got {how}")
    members: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(scores.rows):
        if row.get("patient_id"):
            members.setdefault((row.get("source") or "", str(row["patient_id"])), []).append(i)
    rule_out = all(row.get("rule_out") is not None for row in scores.rows)
    table = []
    for (source, patient), kept in members.items():
        score = float(AGGREGATES[how](scores.score[kept]))
        malignant = scores.malignant[kept]
        table.append({
            "source": source or None, "patient_id": patient,
            "label": "malignant" if malignant.any() else "benign",
            "n_images": len(kept), "n_malignant_images": int(malignant.sum()),
            "score": score, "called": "malignant" if score >= THRESHOLD else "benign",
            "ruled_out": int(all(scores.rows[i]["rule_out"] for i in kept)) if rule_out
            else None,
            "image_ids": ";".join(str(scores.rows[i]["image_id"]) for i in kept),
        })
    return table


def patient_level(scores: LesionScores, how: str = MAX, *, n_boot: int = 2000,
                  seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the JSON-ready figures, the patient table). Needs at least one row with a patient id."""
    table = patient_table(scores, how)
    if not table:
        raise ValueError("no lesion image names a patient")
    malignant = np.array([row["label"] == "malignant" for row in table])
    score = np.array([row["score"] for row in table])
    n_malignant = int(malignant.sum())
    low, high = percentile_interval([rank_auroc(malignant[i], score[i]) for i in
                                     bootstrap_indices(len(table), n_boot=n_boot, seed=seed)])
    figures = {"benign_vs_malignant_auroc": metric_summary(
        rank_auroc(malignant, score), auroc_interval(low, high, n_malignant,
                                                     len(table) - n_malignant), len(table))}
    rates = summarise([_calls(row) for row in table], RATES, n_boot=n_boot, seed=seed)
    figures |= {name: stat for name, stat in rates.items() if stat["n"]}
    named = sum(row["n_images"] for row in table)
    return {
        "score": f"{how} of {scores.name} over a patient's benign and malignant images",
        "patient_score": how, "image_score": scores.name, "threshold": THRESHOLD,
        "n_patients": len(table), "n_malignant": n_malignant,
        "n_benign": len(table) - n_malignant, "n_images": named,
        "n_images_without_patient": len(scores.rows) - named,
        "ci_unit": "patients",
        **{name: dict(stat) for name, stat in figures.items()},
    }, table


def _calls(row: dict[str, Any]) -> dict[str, float]:
    """A patient's 1 / 0 per rate, NaN where the rate does not ask about them."""
    malignant = row["label"] == "malignant"
    called = row["called"] == "malignant"
    ruled_out = row["ruled_out"]
    return {"sensitivity": float(called) if malignant else math.nan,
            "specificity": float(not called) if not malignant else math.nan,
            "rule_out_sensitivity": (math.nan if ruled_out is None or not malignant
                                     else float(not ruled_out)),
            "rule_out_specificity": (math.nan if ruled_out is None or malignant
                                     else float(ruled_out))}


def write_patient_table(path: Path, table: Sequence[dict[str, Any]]) -> None:
    """The patient table as CSV (atomic), in the predictions table's cell format."""
    write_text(path, csv_text(list(TABLE_COLUMNS), list(table)))
