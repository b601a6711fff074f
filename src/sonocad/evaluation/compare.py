"""`sonocad compare`: two models evaluated on the same images, compared pair by pair.

Reads two predictions tables (``sonocad evaluate`` folders or predictions.csv files), joins
them on image_id and computes the papers' Table 2s from the joined rows, with no re-run:

- segmentation (JMIR 2026): per-image metrics on lesion images, mean with a 95 % percentile
  bootstrap CI per model (resampling patients where every row has a patient id), and P from the
  participant-level paired test (`statistics.paired_comparison`);
- classification (QIMS 2023): malignant is positive; sensitivity, specificity and accuracy with
  exact CIs and exact McNemar P, AUROC with DeLong CI and DeLong-test P. A table with more
  classes than benign and malignant (BUSI's normal) is reduced to its benign and malignant
  images, predicted malignant vs not, scored by P(malignant) / (P(benign) + P(malignant)), the
  ``benign_vs_malignant_auroc`` of ``sonocad evaluate``.

A section is computed when both tables have its columns, so a multitask table yields both.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.errors import InputError, SonocadError
from sonocad.evaluation.classification import benign_vs_malignant_scores
from sonocad.evaluation.segmentation import SEGMENTATION_METRICS, MetricSummary, summarise
from sonocad.evaluation.statistics import (
    PAIRED_T,
    WILCOXON,
    Auroc,
    HypothesisTest,
    PairedTest,
    Proportion,
    binary_rates,
    delong_auroc,
    delong_test,
    mcnemar_exact,
    paired_comparison,
)
from sonocad.evaluation.summary import format_ci
from sonocad.predictions import read_predictions

CLASSES = ["benign", "malignant"]  # negative, positive
# Columns both tables must agree on for a joined image: the truth is the same truth.
SHARED_TRUTH = ("patient_id", "label", "truth_lesion")


@dataclass(frozen=True)
class Source:
    """Where a predictions table came from."""

    predictions: Path
    model: str | None  # from metrics.json beside the table, when there is one

    def __str__(self) -> str:
        return f"{self.predictions}" + (f" ({self.model})" if self.model else "")


@dataclass(frozen=True)
class Evaluation:
    source: Source
    rows: list[dict[str, Any]]


@dataclass(frozen=True)
class SegmentationRow:
    metric: str
    a: MetricSummary
    b: MetricSummary
    test: PairedTest


@dataclass(frozen=True)
class SegmentationComparison:
    n_images: int  # lesion images
    n_participants: int
    rows: list[SegmentationRow]


@dataclass(frozen=True)
class ClassificationComparison:
    n_malignant: int
    n_benign: int
    reduced: bool  # True when other classes (normal) were left out
    rates_a: dict[str, Proportion]
    rates_b: dict[str, Proportion]
    mcnemar: dict[str, HypothesisTest]
    auroc_a: Auroc
    auroc_b: Auroc
    delong: HypothesisTest


@dataclass(frozen=True)
class Comparison:
    a: Source
    b: Source
    n_joined: int
    participant_unit: str  # "patient" or "image"
    segmentation: SegmentationComparison | None
    classification: ClassificationComparison | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_evaluations(path_a: str | Path, path_b: str | Path, *, n_boot: int = 2000,
                        seed: int = 0) -> Comparison:
    """Join two evaluations on image_id and compute both Table 2s where the columns allow."""
    a, b = load_evaluation(path_a), load_evaluation(path_b)
    pairs = join(a, b)
    rows_a, rows_b = [p[0] for p in pairs], [p[1] for p in pairs]
    if all(row.get("label") is None and row.get("truth_lesion") is None for row in rows_a):
        raise SonocadError(f"{_both(a, b)}: neither table holds the truth (label, lesion); "
                           "one side must be a `sonocad evaluate` table")
    by_patient = all(row["patient_id"] is not None for row in rows_a)
    segmentation = (compare_segmentation(rows_a, rows_b, by_patient, n_boot=n_boot, seed=seed)
                    if _has_segmentation(a) and _has_segmentation(b) else None)
    classification = (compare_classification(rows_a, rows_b)
                      if _has_classes(a) and _has_classes(b) else None)
    if segmentation is None and classification is None:
        raise SonocadError(f"{_both(a, b)}: no segmentation metrics or benign / malignant class "
                           "predictions in both tables; nothing to compare")
    return Comparison(a.source, b.source, len(pairs),
                      "patient" if by_patient else "image", segmentation, classification)


def load_evaluation(path: str | Path) -> Evaluation:
    """A `sonocad evaluate` folder or a predictions.csv; the model name from metrics.json."""
    path = Path(path)
    table = path / "predictions.csv" if path.is_dir() else path
    if path.is_dir() and not table.is_file():
        raise InputError(path, "no predictions.csv here (expected a `sonocad evaluate` folder)")
    rows = read_predictions(table)
    if not rows:
        raise InputError(table, "predictions table has no rows")
    seen: set[Any] = set()
    for row in rows:
        if row["image_id"] in seen:
            raise InputError(table, f"image_id {row['image_id']!r} appears more than once")
        seen.add(row["image_id"])
    return Evaluation(Source(table, _model_name(table.parent / "metrics.json")), rows)


def join(a: Evaluation, b: Evaluation) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Rows of both tables paired by image_id, in A's order; both must hold the same images."""
    b_rows = {row["image_id"]: row for row in b.rows}
    only_a = [row["image_id"] for row in a.rows if row["image_id"] not in b_rows]
    only_b = sorted(set(b_rows) - {row["image_id"] for row in a.rows}, key=str)
    same_images = "compare needs two evaluations of the same images"
    if len(only_a) == len(a.rows):
        raise SonocadError(f"{_both(a, b)} share no image ids; {same_images}")
    if only_a or only_b:
        raise SonocadError(f"{_both(a, b)} cover different images ({len(only_a)} only in A, "
                           f"{len(only_b)} only in B, e.g. {(only_a or only_b)[0]!r}); "
                           f"{same_images}")
    # A `predict` table has no truth: it takes the other table's (an `evaluate` table's).
    pairs = [(_with_truth(row, b_rows[row["image_id"]]), _with_truth(b_rows[row["image_id"]], row))
             for row in a.rows]
    for key in SHARED_TRUTH:
        differ = [ra["image_id"] for ra, rb in pairs
                  if key in ra and key in rb and ra[key] != rb[key]]
        if differ:
            raise SonocadError(f"{_both(a, b)} disagree on {key} for {len(differ)} image(s), "
                               f"e.g. {differ[0]!r}; were they evaluated on one truth?")
    return pairs


def compare_segmentation(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]],
                         by_patient: bool, *, n_boot: int = 2000,
                         seed: int = 0) -> SegmentationComparison:
    """JMIR 2026 Table 2 on lesion images: means with bootstrap CIs, participant-level P."""
    lesion = [i for i, row in enumerate(rows_a) if row["truth_lesion"] == 1]
    a, b = [rows_a[i] for i in lesion], [rows_b[i] for i in lesion]
    # The JMIR 2026 Table 2 rows, in order; those absent from either table are left out.
    metrics = [m for m in SEGMENTATION_METRICS if _has_values(a, m) and _has_values(b, m)]
    # The participant is the resampling unit of the CIs and the pairing unit of the test.
    unit = "patient_id" if by_patient else "image_id"
    participants = [row[unit] for row in a]
    options = {"n_boot": n_boot, "seed": seed, "group_by": unit}
    summary_a, summary_b = summarise(a, metrics, **options), summarise(b, metrics, **options)
    rows = [SegmentationRow(m, summary_a[m], summary_b[m],
                            paired_comparison(_values(a, m), _values(b, m), participants))
            for m in metrics]
    return SegmentationComparison(len(a), len(set(participants)), rows)


def compare_classification(rows_a: list[dict[str, Any]],
                           rows_b: list[dict[str, Any]]) -> ClassificationComparison:
    """QIMS 2023 Table 2, malignant vs benign: exact CIs, exact McNemar, DeLong."""
    kept = [i for i, row in enumerate(rows_a) if row["label"] in CLASSES]
    labels = np.array([CLASSES.index(rows_a[i]["label"]) for i in kept], dtype=int)
    truth, score_a, predicted_a = _malignancy(labels, [rows_a[i] for i in kept])
    _, score_b, predicted_b = _malignancy(labels, [rows_b[i] for i in kept])
    correct_a, correct_b = predicted_a == truth, predicted_b == truth
    return ClassificationComparison(
        n_malignant=int(truth.sum()),
        n_benign=int((~truth).sum()),
        reduced=len(_class_names(rows_a[0])) > len(CLASSES) or len(kept) < len(rows_a),
        rates_a=binary_rates(truth, predicted_a),
        rates_b=binary_rates(truth, predicted_b),
        mcnemar={
            "sensitivity": mcnemar_exact(predicted_a[truth], predicted_b[truth]),
            "specificity": mcnemar_exact(~predicted_a[~truth], ~predicted_b[~truth]),
            "accuracy": mcnemar_exact(correct_a, correct_b),
        },
        auroc_a=delong_auroc(truth, score_a),
        auroc_b=delong_auroc(truth, score_b),
        delong=delong_test(truth, score_a, score_b),
    )


# --- text ---------------------------------------------------------------------------------

def format_comparison(comparison: Comparison) -> str:
    """Both tables as aligned text, each with a line saying what was computed on what."""
    if comparison.participant_unit == "patient":
        unit = "patients (patient_id)"
    else:
        unit = "images (not every row has a patient_id)"
    lines = [f"A: {comparison.a}", f"B: {comparison.b}",
             f"joined {comparison.n_joined} images on image_id; participants are {unit}"]
    if comparison.segmentation is not None:
        lines += ["", *_segmentation_lines(comparison.segmentation, comparison.participant_unit)]
    if comparison.classification is not None:
        lines += ["", *_classification_lines(comparison.classification)]
    return "\n".join(lines)


def format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _segmentation_lines(seg: SegmentationComparison, unit: str) -> list[str]:
    short = {PAIRED_T: "t", WILCOXON: "Wilcoxon"}
    rows = [[r.metric, format_ci(r.a), format_ci(r.b), format_p(r.test.p_value),
             short.get(r.test.test, r.test.test), str(r.test.n)] for r in seg.rows]
    return [
        f"Segmentation (JMIR 2026 Table 2): lesion images only (truth_lesion = 1), "
        f"{seg.n_images} images from {seg.n_participants} participants;",
        f"mean over images (95 % percentile bootstrap CI over {unit}s); n: participants;",
        "P: per-participant means, paired t if Shapiro-Wilk P >= 0.05 on the differences, "
        "else Wilcoxon",
        *_aligned([["metric", "model A", "model B", "P", "test", "n"], *rows]),
    ]


def _classification_lines(cls: ClassificationComparison) -> list[str]:
    rows = [[name, _format_rate(cls.rates_a[name]), _format_rate(cls.rates_b[name]),
             format_p(cls.mcnemar[name].p_value), "McNemar"] for name in cls.rates_a]
    rows.append(["AUROC", _format_auroc(cls.auroc_a), _format_auroc(cls.auroc_b),
                 format_p(cls.delong.p_value), "DeLong"])
    scope = ("benign and malignant images only (other classes left out), predicted malignant "
             "vs not;" if cls.reduced else "all images;")
    return [
        f"Classification (QIMS 2023 Table 2): malignant = positive; "
        f"{cls.n_malignant} malignant, {cls.n_benign} benign images;",
        scope,
        "95 % exact Clopper-Pearson CIs, AUROC with 95 % DeLong CI; P: exact McNemar",
        "(sensitivity on malignant, specificity on benign, accuracy on all), DeLong test for AUROC",
        *_aligned([["metric", "model A", "model B", "P", "test"], *rows]),
    ]


def _format_rate(rate: Proportion) -> str:
    interval = {"mean": rate.estimate, "ci_low": rate.ci_low, "ci_high": rate.ci_high}
    return f"{format_ci(interval)} {rate.successes}/{rate.total}"


def _format_auroc(auroc: Auroc) -> str:
    return format_ci({"mean": auroc.auroc, "ci_low": auroc.ci_low, "ci_high": auroc.ci_high})


def _aligned(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in table]


# --- helpers ------------------------------------------------------------------------------

def _has_segmentation(evaluation: Evaluation) -> bool:
    rows = evaluation.rows
    return "truth_lesion" in rows[0] and any(_has_values(rows, m) for m in SEGMENTATION_METRICS)


def _has_classes(evaluation: Evaluation) -> bool:
    return "predicted_class" in evaluation.rows[0] and set(CLASSES) <= set(
        _class_names(evaluation.rows[0]))


def _class_names(row: dict[str, Any]) -> list[str]:
    return [key.removeprefix("prob_") for key in row if key.startswith("prob_")]


def _has_values(rows: list[dict[str, Any]], metric: str) -> bool:
    return any(row.get(metric) is not None for row in rows)


def _values(rows: list[dict[str, Any]], metric: str) -> np.ndarray:
    return np.array([row[metric] for row in rows], dtype=float)  # None becomes NaN


def _malignancy(labels: np.ndarray,
                rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truly malignant, malignancy score, predicted malignant) per row."""
    probs = np.array([[row[f"prob_{name}"] for name in CLASSES] for row in rows], dtype=float)
    truth, score = benign_vs_malignant_scores(labels, probs.reshape(-1, len(CLASSES)), CLASSES)
    called = np.array([row["predicted_class"] == "malignant" for row in rows], dtype=bool)
    return truth, score, called


def _with_truth(row: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """`row`, its missing truth columns taken from `other`."""
    missing = {key: other[key] for key in SHARED_TRUTH
               if row.get(key) is None and other.get(key) is not None}
    return {**row, **missing} if missing else row


def _model_name(metrics_path: Path) -> str | None:
    if not metrics_path.is_file():
        return None
    try:
        return json.loads(metrics_path.read_text(encoding="utf-8")).get("model")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
        raise InputError(metrics_path, f"unreadable metrics file ({exc})") from None


def _both(a: Evaluation, b: Evaluation) -> str:
    return f"{a.source.predictions} and {b.source.predictions}"
