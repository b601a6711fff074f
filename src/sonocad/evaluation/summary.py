"""Human-readable lines for a metrics.json: estimate (95 % CI; n) per metric and group, then the
P(malignant) calibration and the patient-level results where evaluate wrote them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# The patient-level figures, in console order
PATIENT_FIGURES = ("benign_vs_malignant_auroc", "sensitivity", "specificity",
                   "rule_out_sensitivity", "rule_out_specificity")
CALIBRATION_FIGURES = ("calibration_slope", "calibration_intercept", "brier")


def format_summary(metrics: dict[str, Any]) -> str:
    if "parts" in metrics:  # a multitask model: one block per head
        lines = [f"{name}: {format_summary(part)}" for name, part in metrics["parts"].items()]
    else:
        lines = [f"{metrics.get('model', 'model')} on {metrics.get('split', '?')}: "
                 f"{metrics['n_images']} images ({metrics['reduction']})"]
        for group, stats in metrics.get("groups", {}).items():
            lines.append(f"  {group} ({stats['n_images']} images)")
            lines += _figure_lines({k: v for k, v in stats.items()
                                    if isinstance(v, dict) and "mean" in v})
        detection = metrics.get("lesion_detection")
        if detection:
            lines.append("  lesion by lesion (found at IoU >= 0.1 / 0.5; made-up lesions per "
                         "image)")
            lines += _figure_lines(detection)
    calibration = metrics.get("malignancy_calibration")
    if calibration:
        lines.append(f"  P(malignant) = {calibration['score']}, on {calibration['n_images']} "
                     f"benign and malignant images ({calibration['n_malignant']} malignant); "
                     f"reliability curve in {calibration['figure']}")
        lines += _figure_lines({name: calibration[name] for name in CALIBRATION_FIGURES})
    patients = metrics.get("patient_level")
    if patients:
        left_out = patients["n_images_without_patient"]
        lines += [f"  per patient: {patients['n_patients']} patients ({patients['n_malignant']}"
                  f" malignant, {patients['n_benign']} benign; {patients['n_images']} lesion "
                  "images" + (f"; {left_out} without a patient id left out" if left_out else "")
                  + f"); table in {patients['table']}",
                  f"    score: {patients['score']}; called malignant at >= "
                  f"{patients['threshold']}; 95 % CIs over patients"]
        lines += _figure_lines({name: patients[name] for name in PATIENT_FIGURES
                                if name in patients})
    if "intervals" in metrics:
        lines.append(f"  {metrics['intervals']}")
    return "\n".join(lines)


def _figure_lines(figures: Mapping[str, Mapping[str, Any]]) -> list[str]:
    width = max(map(len, figures), default=0)
    return [f"    {name:<{width}}  {format_ci(value)}" for name, value in figures.items()]


def format_ci(stat: Mapping[str, Any], *, with_n: bool = True) -> str:
    """'0.712 (0.680-0.741; n=240)'; '1.000 (CI n/a; n=6)' where no interval is estimable
    (`sonocad.evaluation.intervals`); 'n/a' where the figure itself is undefined. The n is
    shown where `stat` has one (and `with_n`): a figure's denominator, which differs from
    metric to metric (a recall's is its class, an AUROC's its two classes)."""
    if _missing(stat["mean"]):
        return "n/a"
    n = stat.get("n") if with_n else None
    low, high = stat.get("ci_low"), stat.get("ci_high")
    if _missing(low) or _missing(high):
        interval = "CI n/a"
    else:  # "-0.691-7.928" would read as a range from a negative number to a negative one
        interval = f"{low:.3f}{' to ' if low < 0 else '-'}{high:.3f}"
    return f"{stat['mean']:.3f} ({interval}" + (f"; n={n})" if n is not None else ")")


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)
