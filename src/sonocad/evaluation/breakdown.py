"""Figures per data source or scanner beside the pooled ones: how a model does on each scanner.

Read from the predictions table's rows (``source`` / ``scanner`` columns), so it is the same
numbers whoever computes them. For each group and for all rows pooled: lesion IoU and Dice
(mean over lesion images), 3-class accuracy and macro-F1, benign-vs-malignant AUROC and the
share of lesion images called normal, each with a 95 % bootstrap CI that resamples patients
where a row names one and single images where not; for a model with a decision rule also the
final (reconciled) calls' accuracy, lesions called normal and normal images called normal,
and the share of images flagged low-confidence, with exact binomial CIs; where the rule
calibrates P(malignant), its calibration slope, intercept and Brier score on the benign and
malignant images (`evaluation.calibration`), and the rule-out point's sensitivity (malignant
images not ruled out) and specificity (benign images ruled out). Per-image means pool as
image-weighted means of the groups' means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sonocad.data.sample import LESION_CLASSES
from sonocad.evaluation.calibration import calibration_figures
from sonocad.evaluation.classification import classification_metrics
from sonocad.evaluation.segmentation import summarise
from sonocad.evaluation.statistics import proportion

POOLED = "pooled"
SEGMENTATION_FIGURES = ("iou", "dice")
CLASSIFICATION_FIGURES = ("accuracy", "macro_f1", "benign_vs_malignant_auroc",
                          "lesion_called_normal", "recall_normal")
# Console and report columns: (key in a group's figures, heading)
COLUMNS = (("lesion_iou", "lesion IoU"), ("lesion_dice", "lesion Dice"),
           ("accuracy", "accuracy"), ("benign_vs_malignant_auroc", "AUROC b-vs-m"),
           ("lesion_called_normal", "lesion->normal"), ("recall_normal", "normal->normal"),
           ("final_lesion_called_normal", "final: lesion->normal"),
           ("final_recall_normal", "final: normal->normal"),
           ("final_accuracy", "final: accuracy"), ("low_confidence", "flagged"),
           ("calibration_slope", "P(malig.) slope"),
           ("rule_out_sensitivity", "rule-out sens."),
           ("rule_out_specificity", "rule-out spec."))


def breakdown(rows: Sequence[dict[str, Any]], by: str, class_names: Sequence[str] | None,
              *, n_boot: int = 2000) -> dict[str, Any]:
    """{"by": by, "groups": {value: figures, ..., "pooled": figures}} over the table's rows."""
    values = sorted({str(row.get(by) or "unknown") for row in rows})
    groups = {value: [r for r in rows if str(r.get(by) or "unknown") == value]
              for value in values}
    groups[POOLED] = list(rows)
    return {"by": by, "groups": {name: _figures(group, class_names, n_boot)
                                 for name, group in groups.items()}}


def _figures(rows: list[dict[str, Any]], class_names: Sequence[str] | None,
             n_boot: int) -> dict[str, Any]:
    # The bootstrap unit: the patient where the row names one, else the image alone.
    rows = [{**row, "_unit": _unit(row)} for row in rows]
    named = sum(1 for row in rows if row.get("patient_id"))
    out: dict[str, Any] = {
        "n_images": len(rows),
        "n_patients": len({row["patient_id"] for row in rows if row.get("patient_id")}) or None,
        "ci_unit": ("patients" if named == len(rows) else "images" if not named
                    else "patients where named, else images"),
    }
    lesion = [row for row in rows if row.get("truth_lesion")]
    if lesion and "iou" in lesion[0]:
        summary = summarise(lesion, SEGMENTATION_FIGURES, n_boot=n_boot, group_by="_unit")
        out |= {f"lesion_{name}": dict(stat) for name, stat in summary.items()}
    if class_names and rows and f"prob_{class_names[0]}" in rows[0]:
        labelled = [row for row in rows if row.get("label") in class_names]
        if labelled:
            metrics = classification_metrics(
                [list(class_names).index(row["label"]) for row in labelled],
                [[row[f"prob_{name}"] for name in class_names] for row in labelled],
                class_names, n_boot=n_boot, groups=[row["_unit"] for row in labelled],
            )["metrics"]
            out |= {name: dict(metrics[name]) for name in CLASSIFICATION_FIGURES
                    if name in metrics and not _undefined(metrics[name]["mean"])}
    if rows and "final_class" in rows[0]:
        out |= _final_calls(rows)
    if rows and rows[0].get("p_malignant") is not None:
        lesion = [row for row in rows if row.get("label") in LESION_CLASSES]
        if lesion:
            figures = calibration_figures([row["label"] == "malignant" for row in lesion],
                                          [row["p_malignant"] for row in lesion],
                                          groups=[row["_unit"] for row in lesion],
                                          n_boot=n_boot)
            out |= {name: dict(stat) for name, stat in figures.items()}
    return out


def _final_calls(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Shares of the reconciled calls and of flagged images, with exact (Clopper-Pearson) CIs."""
    lesion = [row for row in rows if row.get("label") in LESION_CLASSES]
    normal = [row for row in rows if row.get("label") == "normal"]
    counts = {
        "final_accuracy": (sum(r["final_class"] == r["label"] for r in rows), len(rows)),
        "final_lesion_called_normal": (sum(r["final_class"] == "normal" for r in lesion),
                                       len(lesion)),
        "final_recall_normal": (sum(r["final_class"] == "normal" for r in normal), len(normal)),
        "low_confidence": (sum(int(r["low_confidence"]) for r in rows), len(rows)),
    }
    if rows[0].get("rule_out") is not None:
        malignant = [r for r in rows if r.get("label") == "malignant"]
        benign = [r for r in rows if r.get("label") == "benign"]
        counts["rule_out_sensitivity"] = (sum(not r["rule_out"] for r in malignant),
                                          len(malignant))
        counts["rule_out_specificity"] = (sum(bool(r["rule_out"]) for r in benign), len(benign))
    out = {}
    for name, (hits, total) in counts.items():
        if total:
            share = proportion(hits, total)
            out[name] = {"mean": share.estimate, "ci_low": share.ci_low,
                         "ci_high": share.ci_high, "n": total, "n_excluded": 0}
    return out


def _unit(row: dict[str, Any]) -> str:
    return f"patient {row['patient_id']}" if row.get("patient_id") else f"image {row['image_id']}"


def format_breakdown(result: dict[str, Any]) -> str:
    """One console line per group, pooled last: n, then each figure with its CI."""
    from sonocad.evaluation.summary import format_ci

    groups = result["groups"]
    shown = [(key, head) for key, head in COLUMNS
             if any(key in figures for figures in groups.values())]
    width = max(len(name) for name in groups)
    lines = [f"by {result['by']} (95 % CIs over {groups[POOLED]['ci_unit']}):",
             f"  {result['by']:<{width}}  {'images':>6}  " + "  ".join(
                 f"{head:<19}" for _, head in shown)]
    for name, figures in groups.items():
        cells = [format_ci(figures[key]) if key in figures else "—" for key, _ in shown]
        lines.append(f"  {name:<{width}}  {figures['n_images']:>6}  " + "  ".join(
            f"{cell:<19}" for cell in cells))
    return "\n".join(lines)


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)
