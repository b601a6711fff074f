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

A section is computed when both tables have its columns, so a multitask table yields both;
a section left out is said in one line (`Comparison.dropped`). Each row also gives the paired
difference B - A with a 95 % percentile bootstrap CI over the same participants as the
per-model CIs (`differences`). Rows are paired by `sonocad.evaluation.identity` (image_id, else
file path, path suffix or file content; the key and the rows left out on each side are said).
Models are named from the ``provenance.json`` beside each table (model name and file), else the
``model`` of metrics.json, else the table's folder name.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sonocad.errors import InputError, SonocadError
from sonocad.evaluation.bootstrap import bootstrap_ci, bootstrap_indices, percentile_interval
from sonocad.evaluation.classification import benign_vs_malignant_scores
from sonocad.evaluation.identity import Join, join_rows
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
    delong_covariance,
    delong_test,
    mcnemar_exact,
    paired_comparison,
)
from sonocad.evaluation.summary import format_ci
from sonocad.io.outputs import PROVENANCE
from sonocad.predictions import read_predictions

CLASSES = ["benign", "malignant"]  # negative, positive
# Columns both tables must agree on for a joined image: the truth is the same truth.
SHARED_TRUTH = ("patient_id", "label", "truth_lesion")
PAIR = "_pair"  # the joined pair's position: the participant where rows have no patient id


@dataclass(frozen=True)
class Difference:
    """B - A over the same images, with a 95 % percentile bootstrap CI over participants."""

    estimate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class Source:
    """Where a predictions table came from."""

    predictions: Path
    model: str | None  # from provenance.json or metrics.json beside the table, if there
    name: str = ""  # the column heading: the model and its file, else the folder's name

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
    difference: Difference


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
    differences: dict[str, Difference]  # B - A: sensitivity, specificity, accuracy, AUROC


@dataclass(frozen=True)
class Comparison:
    a: Source
    b: Source
    n_joined: int
    participant_unit: str  # "patient" or "image"
    segmentation: SegmentationComparison | None
    classification: ClassificationComparison | None
    join_key: str = "image_id"  # `sonocad.evaluation.identity.KEYS`
    join_summary: str = ""  # the key, rows matched and left out on each side, in one line
    only_a: int = 0  # rows of A that no row of B matched
    only_b: int = 0
    dropped: list[str] = field(default_factory=list)  # one line per section left out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_evaluations(path_a: str | Path, path_b: str | Path, *, n_boot: int = 2000,
                        seed: int = 0) -> Comparison:
    """Join two predictions tables (`sonocad.evaluation.identity`) and compute both Table 2s
    where the columns allow, with paired differences B - A."""
    a, b = load_evaluation(path_a), load_evaluation(path_b)
    if a.source.name == b.source.name:  # the columns must be told apart
        a = Evaluation(replace(a.source, name=f"{a.source.name} (A)"), a.rows)
        b = Evaluation(replace(b.source, name=f"{b.source.name} (B)"), b.rows)
    joined, pairs = join(a, b)
    rows_a, rows_b = [p[0] for p in pairs], [p[1] for p in pairs]
    if all(row.get("label") is None and row.get("truth_lesion") is None for row in rows_a):
        raise SonocadError(f"{_both(a, b)}: neither table holds the truth (label, lesion); "
                           "one side must be a `sonocad evaluate` table")
    by_patient = all(row.get("patient_id") is not None for row in rows_a)
    dropped = []
    segmentation = classification = None
    seg_a, seg_b = _has_segmentation(a), _has_segmentation(b)
    if seg_a and seg_b:
        segmentation = compare_segmentation(rows_a, rows_b, by_patient, n_boot=n_boot,
                                            seed=seed)
    elif seg_a or seg_b:
        dropped.append(_dropped("segmentation", a if seg_b else b,
                                "no truth_lesion and segmentation metric columns"))
    cls_a, cls_b = _has_classes(a), _has_classes(b)
    if cls_a and cls_b:
        classification = compare_classification(rows_a, rows_b, by_patient, n_boot=n_boot,
                                                seed=seed)
    elif cls_a or cls_b:
        dropped.append(_dropped("classification", a if cls_b else b,
                                "no predicted_class with prob_benign and prob_malignant"))
    if segmentation is None and classification is None:
        raise SonocadError(f"{_both(a, b)}: no segmentation metrics or benign / malignant class "
                           "predictions in both tables; nothing to compare")
    return Comparison(a.source, b.source, len(pairs), "patient" if by_patient else "image",
                      segmentation, classification, joined.key, joined.summary(),
                      len(joined.only_a), len(joined.only_b), dropped)


def load_evaluation(path: str | Path) -> Evaluation:
    """A `sonocad evaluate` or `sonocad predict` folder, or its predictions.csv; the model
    named from provenance.json or metrics.json beside it."""
    path = Path(path)
    table = path / "predictions.csv" if path.is_dir() else path
    if path.is_dir() and not table.is_file():
        raise InputError(path, "no predictions.csv here (expected a `sonocad evaluate` folder)")
    rows = read_predictions(table)
    if not rows:
        raise InputError(table, "predictions table has no rows")
    model, name = _model_names(table.parent)
    return Evaluation(Source(table, model, name), rows)


def join(a: Evaluation, b: Evaluation
         ) -> tuple[Join, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The join of both tables and their paired rows in A's order, each side's missing truth
    taken from the other (a `predict` table has none); the truth must agree."""
    joined = join_rows(a.rows, b.rows)
    if not joined.pairs:
        raise SonocadError(f"{_both(a, b)} share no images (neither by image_id, file path, "
                           "path suffix nor file content); compare needs two tables of the "
                           "same images")
    pairs = []
    for k, (i, j) in enumerate(joined.pairs):
        row_a, row_b = a.rows[i], b.rows[j]
        pairs.append(({**_with_truth(row_a, row_b), PAIR: k},
                      {**_with_truth(row_b, row_a), PAIR: k}))
    for key in SHARED_TRUTH:
        differ = [ra["image_id"] for ra, rb in pairs
                  if key in ra and key in rb and ra[key] != rb[key]]
        if differ:
            raise SonocadError(f"{_both(a, b)} disagree on {key} for {len(differ)} image(s), "
                               f"e.g. {differ[0]!r}; were they evaluated on one truth?")
    return joined, pairs


def compare_segmentation(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]],
                         by_patient: bool, *, n_boot: int = 2000,
                         seed: int = 0) -> SegmentationComparison:
    """JMIR 2026 Table 2 on lesion images: means with bootstrap CIs, participant-level P."""
    lesion = [i for i, row in enumerate(rows_a) if row["truth_lesion"] == 1]
    a, b = [rows_a[i] for i in lesion], [rows_b[i] for i in lesion]
    # The JMIR 2026 Table 2 rows, in order; those absent from either table are left out.
    metrics = [m for m in SEGMENTATION_METRICS if _has_values(a, m) and _has_values(b, m)]
    # The participant is the resampling unit of the CIs and the pairing unit of the test.
    unit = "patient_id" if by_patient else PAIR
    participants = [row[unit] for row in a]
    options = {"n_boot": n_boot, "seed": seed, "group_by": unit}
    summary_a, summary_b = summarise(a, metrics, **options), summarise(b, metrics, **options)
    rows = []
    for m in metrics:
        values_a, values_b = _values(a, m), _values(b, m)
        diff = values_b - values_a  # NaN where either side has none: left out
        low, high = bootstrap_ci(diff, n_boot=n_boot, seed=seed, groups=participants)
        estimate = float(np.nanmean(diff)) if np.isfinite(diff).any() else math.nan
        rows.append(SegmentationRow(m, summary_a[m], summary_b[m],
                                    paired_comparison(values_a, values_b, participants),
                                    Difference(estimate, low, high)))
    return SegmentationComparison(len(a), len(set(participants)), rows)


def compare_classification(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]],
                           by_patient: bool = False, *, n_boot: int = 2000,
                           seed: int = 0) -> ClassificationComparison:
    """QIMS 2023 Table 2, malignant vs benign: exact CIs, exact McNemar, DeLong; differences
    B - A with bootstrap CIs over participants."""
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
        differences=_classification_differences(
            truth, (predicted_a, predicted_b), (score_a, score_b),
            [rows_a[i]["patient_id" if by_patient else PAIR] for i in kept], n_boot, seed),
    )


def _classification_differences(truth: np.ndarray, predicted: tuple[np.ndarray, np.ndarray],
                                scores: tuple[np.ndarray, np.ndarray], groups: list[Any],
                                n_boot: int, seed: int) -> dict[str, Difference]:
    """B - A of sensitivity, specificity, accuracy and AUROC; CIs from one set of resamples
    of participants (a resample without both classes gives no AUROC and is left out)."""
    def stats(idx: np.ndarray) -> np.ndarray:
        y = truth[idx]
        out = []
        for called in predicted:
            p = called[idx]
            out.append([_share(p[y]), _share(~p[~y]), _share(p == y)])
        if y.any() and not y.all():
            aurocs, _ = delong_covariance(y, np.stack([s[idx] for s in scores]))
            out[0].append(aurocs[0])
            out[1].append(aurocs[1])
        else:
            out[0].append(math.nan)
            out[1].append(math.nan)
        return np.array(out[1]) - np.array(out[0])

    estimate = stats(np.arange(truth.size))
    replicates = np.array([stats(idx) for idx in bootstrap_indices(
        truth.size, n_boot=n_boot, seed=seed, groups=np.array(groups, dtype=object).astype(str))])
    names = ("sensitivity", "specificity", "accuracy", "AUROC")
    differences = {}
    for k, name in enumerate(names):
        low, high = (percentile_interval(replicates[:, k]) if len(replicates)
                     else (math.nan, math.nan))
        differences[name] = Difference(float(estimate[k]), low, high)
    return differences


def _share(hits: np.ndarray) -> float:
    return float(hits.mean()) if hits.size else math.nan


# --- text ---------------------------------------------------------------------------------

def format_comparison(comparison: Comparison) -> str:
    """Both tables as aligned text, each with a line saying what was computed on what."""
    if comparison.participant_unit == "patient":
        unit = "patients (patient_id)"
    else:
        unit = "images (not every row has a patient_id)"
    names = (comparison.a.name or "model A", comparison.b.name or "model B")
    lines = [f"A: {names[0]}: {comparison.a.predictions}",
             f"B: {names[1]}: {comparison.b.predictions}",
             comparison.join_summary or f"joined {comparison.n_joined} images on image_id",
             f"participants are {unit}; difference: B - A with 95 % percentile bootstrap CI "
             "over participants"]
    lines += comparison.dropped
    if comparison.segmentation is not None:
        lines += ["", *_segmentation_lines(comparison.segmentation, comparison.participant_unit,
                                           names)]
    if comparison.classification is not None:
        lines += ["", *_classification_lines(comparison.classification, names)]
    return "\n".join(lines)


def format_difference(difference: Difference) -> str:
    """'+0.052 (-0.010 to 0.113)', or 'n/a' when undefined."""
    if math.isnan(difference.estimate):
        return "n/a"
    if math.isnan(difference.ci_low):
        return f"{difference.estimate:+.3f}"
    return (f"{difference.estimate:+.3f} ({difference.ci_low:.3f} to "
            f"{difference.ci_high:.3f})")


def format_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _segmentation_lines(seg: SegmentationComparison, unit: str,
                        names: tuple[str, str]) -> list[str]:
    short = {PAIRED_T: "t", WILCOXON: "Wilcoxon"}
    rows = [[r.metric, format_ci(r.a), format_ci(r.b), format_difference(r.difference),
             format_p(r.test.p_value), short.get(r.test.test, r.test.test), str(r.test.n)]
            for r in seg.rows]
    return [
        f"Segmentation (JMIR 2026 Table 2): lesion images only (truth_lesion = 1), "
        f"{seg.n_images} images from {seg.n_participants} participants;",
        f"mean over images (95 % percentile bootstrap CI over {unit}s); n: participants;",
        "P: per-participant means, paired t if Shapiro-Wilk P >= 0.05 on the differences, "
        "else Wilcoxon",
        *_aligned([["metric", *names, "B - A", "P", "test", "n"], *rows]),
    ]


def _classification_lines(cls: ClassificationComparison, names: tuple[str, str]) -> list[str]:
    rows = [[name, _format_rate(cls.rates_a[name]), _format_rate(cls.rates_b[name]),
             format_difference(cls.differences[name]), format_p(cls.mcnemar[name].p_value),
             "McNemar"] for name in cls.rates_a]
    rows.append(["AUROC", _format_auroc(cls.auroc_a), _format_auroc(cls.auroc_b),
                 format_difference(cls.differences["AUROC"]), format_p(cls.delong.p_value),
                 "DeLong"])
    scope = ("benign and malignant images only (other classes left out), predicted malignant "
             "vs not;" if cls.reduced else "all images;")
    return [
        f"Classification (QIMS 2023 Table 2): malignant = positive; "
        f"{cls.n_malignant} malignant, {cls.n_benign} benign images;",
        scope,
        "95 % exact Clopper-Pearson CIs, AUROC with 95 % DeLong CI; P: exact McNemar",
        "(sensitivity on malignant, specificity on benign, accuracy on all), DeLong test for AUROC",
        *_aligned([["metric", *names, "B - A", "P", "test"], *rows]),
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


def _model_names(folder: Path) -> tuple[str | None, str]:
    """(the model's registry name, the column heading) for a table in `folder`: from
    provenance.json (name and file name), else metrics.json's model, else the folder name."""
    model, heading = None, ""
    provenance = _read_json(folder / PROVENANCE)
    models = provenance.get("models") if isinstance(provenance, dict) else None
    if isinstance(models, list) and models and isinstance(models[0], dict):
        model = models[0].get("name")
        file = models[0].get("file")
        heading = " ".join([str(model or ""), f"({Path(file).name})" if file else ""]).strip()
    if not model:
        metrics = _read_json(folder / "metrics.json")
        model = metrics.get("model") if isinstance(metrics, dict) else None
        heading = heading or str(model or "")
    return (str(model) if model else None), heading or folder.resolve().name or str(folder)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"unreadable file ({exc})") from None


def _dropped(section: str, lacking: Evaluation, what: str) -> str:
    return (f"{section} not compared: only one table has it ({lacking.source.predictions} has "
            f"{what})")


def _both(a: Evaluation, b: Evaluation) -> str:
    return f"{a.source.predictions} and {b.source.predictions}"
