"""Figures per data source or scanner beside the pooled ones: how a model does on each scanner.

Read from the predictions table's rows (``source`` / ``scanner`` columns), so it is the same
numbers whoever computes them. For each group and for all rows pooled: lesion IoU and Dice
(mean over lesion images), 3-class accuracy and macro-F1, benign-vs-malignant AUROC and the
share of lesion images called normal, each with a 95 % bootstrap CI that resamples patients
where a row names one and single images where not; for a model with a decision rule also the
final (reconciled) calls' accuracy, lesions called normal and normal images called normal,
and the share of images flagged low-confidence; where the rule calibrates P(malignant), its
calibration slope, intercept and Brier score on the benign and malignant images
(`evaluation.calibration`), and the rule-out point's sensitivity (malignant images not ruled
out) and specificity (benign images ruled out). Every share's interval follows
`evaluation.intervals`: the same bootstrap, exact (Clopper-Pearson) where the counts are small.
Per-image means pool as image-weighted means of the groups' means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sonocad.data.sample import LESION_CLASSES
from sonocad.evaluation.bootstrap import row_unit
from sonocad.evaluation.calibration import calibration_figures
from sonocad.evaluation.classification import classification_metrics
from sonocad.evaluation.segmentation import summarise

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
    rows = [{**row, "_unit": row_unit(row)} for row in rows]
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
        out |= _final_calls(rows, n_boot)
    if rows and rows[0].get("p_malignant") is not None:
        lesion = [row for row in rows if row.get("label") in LESION_CLASSES]
        if lesion:
            figures = calibration_figures([row["label"] == "malignant" for row in lesion],
                                          [row["p_malignant"] for row in lesion],
                                          groups=[row["_unit"] for row in lesion],
                                          n_boot=n_boot)
            out |= {name: dict(stat) for name, stat in figures.items()}
    return out


def _final_calls(rows: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Shares of the reconciled calls and of flagged images: per row 1 / 0, or NaN where the
    share does not ask about that row (a normal image for lesions called normal)."""
    def share(hit: bool, counted: bool = True) -> float:
        return float(hit) if counted else math.nan

    rule_out = rows[0].get("rule_out") is not None  # the rule has a rule-out point
    flags = [{
        "_unit": r["_unit"],
        "final_accuracy": share(r["final_class"] == r["label"]),
        "final_lesion_called_normal": share(r["final_class"] == "normal",
                                            r.get("label") in LESION_CLASSES),
        "final_recall_normal": share(r["final_class"] == "normal", r.get("label") == "normal"),
        "low_confidence": share(bool(r["low_confidence"])),
        **({"rule_out_sensitivity": share(not r["rule_out"], r.get("label") == "malignant"),
            "rule_out_specificity": share(bool(r["rule_out"]), r.get("label") == "benign")}
           if rule_out else {}),
    } for r in rows]
    names = [name for name in flags[0] if name != "_unit"]
    summary = summarise(flags, names, n_boot=n_boot, group_by="_unit")
    return {name: dict(stat) for name, stat in summary.items() if stat["n"]}


def format_breakdown(result: dict[str, Any]) -> str:
    """One console line per group, pooled last: n, then each figure with its CI and n (a
    figure's n is its denominator: lesion images for IoU, malignant ones for a sensitivity)."""
    from sonocad.evaluation.summary import format_ci

    groups = result["groups"]
    shown = [(key, head) for key, head in COLUMNS
             if any(key in figures for figures in groups.values())]
    table = [[result["by"], "images", *(head for _, head in shown)]]
    table += [[name, str(figures["n_images"]),
               *(format_ci(figures[key]) if key in figures else "—" for key, _ in shown)]
              for name, figures in groups.items()]
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    return "\n".join([f"by {result['by']} (95 % CIs over {groups[POOLED]['ci_unit']}):"] + [
        "  " + "  ".join(cell.rjust(w) if k == 1 else cell.ljust(w)
                         for k, (cell, w) in enumerate(zip(row, widths))).rstrip()
        for row in table])


def _undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)
