"""A classifier's results in the report: its figures with CIs overall and per class, the class
head's calls beside the final calls of a decision rule, and the ROC, confusion and reliability
charts, each a full-width figure of its own.

The charts are drawn from the evaluation's predictions table and metrics.json rather than taken
from the PNG files `sonocad evaluate` wrote, so that they carry what a printed report needs: the
ROC's bootstrap bands and operating points, and the final calls' confusion matrix.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sonocad.data.sample import LESION_CLASSES
from sonocad.evaluation.statistics import Proportion, proportion
from sonocad.report.charts import confusion_chart, reliability_chart, roc_chart
from sonocad.report.figures import figure_uri
from sonocad.report.html import Html, estimate, figure, join, number, table, tag
from sonocad.report.roc import CALLS, roc_curves
from sonocad.report.sources import Part
from sonocad.report.values import NO_IMAGES, footnote, metric_label, not_applicable, stat

PER_CLASS = ("precision", "recall", "f1", "auroc")
EMPTY = "no image in the denominator (no test image of that class, or none called it)"


def classification_results(part: Part, rows: Sequence[dict[str, Any]]) -> Html:
    """Tables and charts of one classification evaluation; `rows`: its predictions table."""
    figures = part.metrics.get("groups", {}).get("all", {})
    classes = list(part.metrics.get("class_names", []))
    per_class = {f"{name}_{label}" for name in PER_CLASS for label in classes}
    overall = [[metric_label(key), stat(value)] for key, value in figures.items()
               if isinstance(value, dict) and key not in per_class]
    return join([
        table(["Metric", "Estimate (95 % CI)"], overall, numeric=[1],
              caption=f"Classification of {figures.get('n_images', '?')} test images: the "
                      "class head's call (the most probable class)"),
        _per_class(part, figures, classes),
        _calls(rows, classes),
        _charts(part, rows, figures, classes),
    ])


def _per_class(part: Part, figures: dict[str, Any], classes: list[str]) -> Html:
    support = part.metrics.get("support", {})
    absent = [label for label in classes if support.get(label) == 0]
    rows = [[label, number(support.get(label)),
             *(not_applicable() if label in absent else
               stat(figures[f"{name}_{label}"]) if f"{name}_{label}" in figures else "–"
               for name in PER_CLASS)]
            for label in classes]
    return join([table(["Class", "Support", "Precision", "Recall", "F1", "AUROC"], rows,
                       numeric=range(1, 6),
                       caption="Per class, one against the rest (95 % bootstrap CI)"),
                 footnote({"*": NO_IMAGES} if absent else {})])


def _calls(rows: Sequence[dict[str, Any]], classes: list[str]) -> Html:
    """The class head's calls and the decision rule's final calls on the same images, with
    exact CIs (k / n beside each); nothing for a model without a rule."""
    if not rows or rows[0].get("final_class") is None:
        return Html("")
    truth = [row["label"] for row in rows]
    rates = {label: call_rates(truth, [row[column] for row in rows], classes)
             for column, label in CALLS.items()}
    cells = [[name, *(_rate(rates[label][name]) for label in CALLS.values())]
             for name in rates[CALLS["predicted_class"]]]
    changed = sum(row["final_class"] != row["predicted_class"] for row in rows)
    flagged = sum(int(row.get("low_confidence") or 0) for row in rows)
    return join([
        tag("h4", "Class head and final call"),
        tag("p", join([f"The decision rule reconciles the class head with the lesion "
                       f"outline: it changed {changed} of {len(rows)} calls and flagged "
                       f"{flagged} image(s) low-confidence. The final call is what a user of ",
                       tag("code", "sonocad predict"), " and the viewer sees."], sep=""),
            class_="small"),
        table(["Measure", "Class head", "Final call"], cells, numeric=[1, 2],
              caption="The class head's and the final calls on the same test images: share "
                      "with exact 95 % CI (Clopper-Pearson) and k / n"),
        footnote({"†": EMPTY} if any(rate.total == 0 for calls in rates.values()
                                     for rate in calls.values()) else {}),
    ])


def call_rates(truth: Sequence[str], said: Sequence[str],
               classes: Sequence[str]) -> dict[str, Proportion]:
    """Accuracy, each class's recall and precision, and lesion images called normal, of the
    calls `said` against `truth`."""
    pairs = list(zip(truth, said, strict=True))
    rates = {"Accuracy": proportion(sum(t == s for t, s in pairs), len(pairs))}
    for name in classes:
        rates[f"Recall, {name}"] = proportion(sum(t == s == name for t, s in pairs),
                                              list(truth).count(name))
    for name in classes:
        rates[f"Precision, {name}"] = proportion(sum(t == s == name for t, s in pairs),
                                                 list(said).count(name))
    if "normal" in classes:
        lesion = [s for t, s in pairs if t in LESION_CLASSES]
        rates["Lesion images called normal"] = proportion(lesion.count("normal"), len(lesion))
    return rates


def _rate(rate: Proportion) -> Html:
    if rate.total == 0:
        return not_applicable("†")
    return Html(estimate(rate.estimate, rate.ci_low, rate.ci_high)
                + tag("span", f"{rate.successes}/{rate.total}", class_="ci"))


def _charts(part: Part, rows: Sequence[dict[str, Any]], figures: dict[str, Any],
            classes: list[str]) -> Html:
    blocks = []
    curves = roc_curves(rows, classes, figures)
    if curves:
        calls = " and ".join(dict.fromkeys(c for curve in curves for c in curve.points))
        blocks.append(figure(figure_uri(roc_chart(curves)),
                             "ROC curves, one class against the rest (solid) and benign against "
                             "malignant among the lesion images (dashed, black), with 95 % "
                             "pointwise bootstrap bands; markers: where the "
                             f"{calls or 'calls'} sit on each curve.", alt="ROC", wide=True))
    matrices = _confusion(part, rows, classes)
    if matrices:
        blocks.append(figure(figure_uri(confusion_chart(matrices, classes)),
                             "Confusion matrices of the test images: rows the truth, columns "
                             "the call; each cell's count and its share of the true class, "
                             "coloured by that share.", alt="confusion matrix", wide=True))
    calibration = part.metrics.get("calibration") or {}
    if calibration.get("confidence") is not None:
        blocks.append(figure(figure_uri(reliability_chart(
            calibration, (figures.get("ece") or {}).get("mean"))),
            "Reliability of the class head: accuracy against top-class confidence in "
            f"{calibration.get('n_bins', 'equal')} equal-width bins (left) and how many "
            "images fall in each (right).", alt="reliability", wide=True))
    return join(blocks)


def _confusion(part: Part, rows: Sequence[dict[str, Any]],
               classes: list[str]) -> dict[str, np.ndarray]:
    """The class head's matrix (metrics.json) and the final calls' (the table), if any."""
    matrices = {}
    recorded = part.metrics.get("confusion_matrix")
    if recorded and list(recorded.get("labels", [])) == classes:
        matrices["Class head"] = np.array(recorded["matrix"], dtype=int)
    if rows and rows[0].get("final_class") is not None:
        final = np.zeros((len(classes), len(classes)), dtype=int)
        for row in rows:
            if row["label"] in classes and row["final_class"] in classes:
                final[classes.index(row["label"]), classes.index(row["final_class"])] += 1
        matrices["Final call"] = final
    return matrices
