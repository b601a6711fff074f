"""How metrics.json's figures read in the report: their names, an estimate with its CI, and
"n/a" with the reason where a figure is undefined by construction.

A figure that cannot be anything but one value is not a result: on images without a lesion
every predicted lesion pixel is a false positive, so pixel precision there is 0 whatever the
model does, and "0.000 (0.000–0.000)" would read as a measured failure. Such cells say "n/a"
and a footnote under the table says why.
"""

from __future__ import annotations

from typing import Any

from sonocad.report.html import Html, estimate, tag

LABELS = {
    "dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall (sensitivity)",
    "specificity": "Specificity", "pixel_accuracy": "Pixel accuracy", "hd95_px": "HD95 (px)",
    "hd95_mm": "HD95 (mm)", "accuracy": "Accuracy", "macro_f1": "Macro F1",
    "macro_auroc": "Macro AUROC", "benign_vs_malignant_auroc": "AUROC benign vs malignant",
    "ece": "Calibration error (ECE)", "sensitivity": "Sensitivity",
    "lesion_called_normal": "Lesion images called normal",
}
# (image group, metric) -> why the figure is fixed by construction there.
STRUCTURAL = {
    ("normal", "precision"): "images without a lesion have no lesion pixels, so every "
                             "predicted lesion pixel is a false positive and pixel precision "
                             "is 0 whatever the model does",
    ("normal", "recall"): "images without a lesion have no lesion pixels to find",
    ("normal", "hd95_px"): "images without a lesion have no lesion boundary",
    ("normal", "hd95_mm"): "images without a lesion have no lesion boundary",
}
NO_IMAGES = ("no test image of this class, so recall and AUROC are undefined and precision is "
             "0 by construction")


def metric_label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


def stat(value: dict[str, Any]) -> Html:
    """A metrics.json figure ({mean or estimate, ci_low, ci_high}) as estimate and CI."""
    mean = value.get("mean", value.get("estimate"))
    return estimate(mean, value.get("ci_low"), value.get("ci_high"))


def not_applicable(mark: str = "*") -> Html:
    """The cell of a figure fixed by construction; `mark` points to its footnote."""
    return tag("span", f"n/a{mark}", class_="na")


def footnote(reasons: dict[str, str]) -> Html:
    """'* why; † why' under a table, for the marks its n/a cells carry ('' when none)."""
    if not reasons:
        return Html("")
    return tag("p", "; ".join(f"{mark} n/a: {why}" for mark, why in reasons.items()) + ".",
               class_="footnote")


def is_stat(value: dict[str, Any]) -> bool:
    """Whether a metrics.json entry is a figure: a mean or estimate (a number or null),
    perhaps with a CI."""
    key = "mean" if "mean" in value else "estimate" if "estimate" in value else None
    return key is not None and (value[key] is None or isinstance(value[key], int | float))
