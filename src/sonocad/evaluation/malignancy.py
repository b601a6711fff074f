"""P(malignant) of a predictions table's lesion images, and how far it can be taken at its word.

The score is the model's ``p_malignant`` where its decision rule gives one (Platt-calibrated
where the rule holds a scaling, `sonocad.inference.decision`), else the class head's
P(malignant) / (P(benign) + P(malignant)): the belief once "normal" is set aside. Only benign
and malignant images count: the question is the biopsy decision once a lesion is there.

`malignancy_calibration` gives the score's calibration slope, intercept and Brier score with
bootstrap CIs (`evaluation.calibration`, patients resampled where rows name them) and its
reliability curve, which `evaluation.figures.reliability_curve_figure` draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sonocad.data.sample import LESION_CLASSES
from sonocad.evaluation.bootstrap import row_unit
from sonocad.evaluation.calibration import calibration_figures, reliability_curve
from sonocad.evaluation.classification import malignancy_ratio

CALIBRATED = "p_malignant"
RATIO = "P(malignant) / (P(benign) + P(malignant))"
PROBABILITIES = ("prob_benign", "prob_malignant")


@dataclass(frozen=True)
class LesionScores:
    """The benign and malignant rows of a table with each one's truth and score."""

    rows: list[dict[str, Any]]
    malignant: np.ndarray  # bool, per row
    score: np.ndarray  # float in [0, 1], per row
    name: str  # CALIBRATED or RATIO


def lesion_scores(rows: Sequence[dict[str, Any]]) -> LesionScores | None:
    """The table's lesion images and their P(malignant); None where it has no benign or
    malignant image, or no such score (a segmentation model, a detector)."""
    lesion = [row for row in rows if row.get("label") in LESION_CLASSES]
    if not lesion:
        return None
    malignant = np.array([row["label"] == "malignant" for row in lesion])
    if all(row.get(CALIBRATED) is not None for row in lesion):
        return LesionScores(lesion, malignant,
                            np.array([row[CALIBRATED] for row in lesion], dtype=float),
                            CALIBRATED)
    if all(row.get(name) is not None for row in lesion for name in PROBABILITIES):
        benign, malign = (np.array([row[name] for row in lesion], dtype=float)
                          for name in PROBABILITIES)
        return LesionScores(lesion, malignant, malignancy_ratio(benign, malign), RATIO)
    return None


def malignancy_calibration(scores: LesionScores, *, n_boot: int = 2000) -> dict[str, Any]:
    """The JSON-ready calibration block of a table's P(malignant): which score, how many
    images, slope / intercept / Brier with CIs and the reliability curve."""
    figures = calibration_figures(scores.malignant, scores.score, n_boot=n_boot,
                                  groups=[row_unit(row) for row in scores.rows])
    return {"score": scores.name, "n_images": len(scores.rows),
            "n_malignant": int(scores.malignant.sum()),
            **{name: dict(stat) for name, stat in figures.items()},
            "reliability": reliability_curve(scores.malignant, scores.score)}
