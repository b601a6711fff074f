"""The ROC curves the report draws, from the evaluation's predictions table: one class against
the rest for each class and benign against malignant, each with a 95 % bootstrap band and the
operating points the model's calls sit at.

The band is pointwise: the 2.5th and 97.5th percentiles of the resampled curves' sensitivity
at each false-positive rate, resampling patients where every row names one, else images (as
the AUROC's CI in metrics.json). An operating point is the (1 - specificity, sensitivity) of a
call: the class head's (``predicted_class``) and, for a model with a decision rule, the final
call's (``final_class``), so a reader sees where on its curve the model actually decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from sonocad.evaluation.bootstrap import bootstrap_indices
from sonocad.evaluation.classification import BENIGN_VS_MALIGNANT, benign_vs_malignant_scores

GRID = np.linspace(0.0, 1.0, 101)  # false-positive rates the band is drawn at
N_BOOT = 200  # resamples for the band: enough for a drawn outline, cheap for a report
CALLS = {"predicted_class": "class head's call", "final_class": "final call"}


@dataclass(frozen=True)
class Roc:
    name: str  # the positive class, or "benign vs malignant"
    fpr: np.ndarray
    tpr: np.ndarray
    auroc: dict[str, Any] | None  # metrics.json's figure with its CI, where it has one
    band: tuple[np.ndarray, np.ndarray] | None  # sensitivity low, high at GRID
    points: dict[str, tuple[float, float]] = field(default_factory=dict)  # call -> (fpr, tpr)

    @property
    def pair(self) -> bool:
        return self.name == BENIGN_VS_MALIGNANT.replace("_", " ")


def roc_curves(rows: Sequence[dict[str, Any]], class_names: Sequence[str],
               figures: dict[str, Any]) -> list[Roc]:
    """The curves of every class present both as truth and as not, then benign against
    malignant; `figures` is metrics.json's ``groups.all`` (the AUROCs and their CIs)."""
    rows = [row for row in rows if row.get("label") in class_names]
    if not rows or any(row.get(f"prob_{name}") is None for row in rows for name in class_names):
        return []
    labels = np.array([class_names.index(row["label"]) for row in rows])
    probs = np.array([[row[f"prob_{name}"] for name in class_names] for row in rows], float)
    units = _units(rows)
    curves = [_curve(name, labels == k, probs[:, k], _calls(rows, name),
                     figures.get(f"auroc_{name}"), units)
              for k, name in enumerate(class_names)]
    if {"benign", "malignant"} <= set(class_names):
        kept = np.isin(labels, [class_names.index("benign"), class_names.index("malignant")])
        truth, score = benign_vs_malignant_scores(labels[kept], probs[kept], class_names)
        lesion_rows = [row for row, keep in zip(rows, kept) if keep]
        curves.append(_curve(BENIGN_VS_MALIGNANT.replace("_", " "), truth, score,
                             _calls(lesion_rows, "malignant"),
                             figures.get(f"{BENIGN_VS_MALIGNANT}_auroc"),
                             None if units is None else units[kept]))
    return [curve for curve in curves if curve is not None]


def _curve(name: str, truth: np.ndarray, score: np.ndarray, calls: dict[str, np.ndarray],
           auroc: dict[str, Any] | None, units: np.ndarray | None) -> Roc | None:
    if truth.all() or not truth.any():  # one class only: no curve
        return None
    fpr, tpr, _ = roc_curve(truth, score)
    points = {label: (float(call[~truth].mean()), float(call[truth].mean()))
              for label, call in calls.items()}
    return Roc(name, fpr, tpr, auroc, _band(truth, score, units), points)


def _band(truth: np.ndarray, score: np.ndarray,
          units: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    curves = []
    for resample in bootstrap_indices(truth.size, n_boot=N_BOOT, groups=units):
        y, s = truth[resample], score[resample]
        if y.all() or not y.any():  # a resample without both classes has no curve
            continue
        fpr, tpr, _ = roc_curve(y, s)
        curves.append(np.interp(GRID, fpr, tpr))
    if len(curves) < N_BOOT // 2:  # too few to outline anything
        return None
    low, high = np.quantile(np.array(curves), [0.025, 0.975], axis=0)
    return low, high


def _calls(rows: Sequence[dict[str, Any]], positive: str) -> dict[str, np.ndarray]:
    """Whether each call says `positive`, for the call columns the table has."""
    return {label: np.array([row[column] == positive for row in rows])
            for column, label in CALLS.items() if rows and rows[0].get(column) is not None}


def _units(rows: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """The bootstrap's units: patients where every row names one, else None (images)."""
    patients = [row.get("patient_id") for row in rows]
    return np.array(patients, dtype=str) if all(patients) else None
