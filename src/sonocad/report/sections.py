"""The report's sections: one per run (data, training, results, heatmaps, model card) and, for
several runs, a side-by-side table of their headline numbers.

Everything shown comes from files `sonocad train` and `sonocad evaluate` wrote; each table and
figure says what it was computed on, and each missing piece is named in a visible note rather
than left out silently.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sonocad.evaluation.breakdown import COLUMNS as BREAKDOWN_COLUMNS
from sonocad.evaluation.breakdown import POOLED
from sonocad.explain.runner import LESION_PROBABILITY
from sonocad.report.card import describe_transform, model_card, selection
from sonocad.report.examples import Example
from sonocad.report.figures import figure_uri, file_uri, image_uri, training_curves
from sonocad.report.html import (
    Html,
    cards,
    escape,
    estimate,
    figure,
    figures,
    join,
    note,
    number,
    table,
    tag,
)
from sonocad.report.sources import Part, Run

LABELS = {
    "dice": "Dice", "iou": "IoU", "precision": "Precision", "recall": "Recall (sensitivity)",
    "specificity": "Specificity", "pixel_accuracy": "Pixel accuracy", "hd95_px": "HD95 (px)",
    "hd95_mm": "HD95 (mm)", "accuracy": "Accuracy", "macro_f1": "Macro F1",
    "macro_auroc": "Macro AUROC", "benign_vs_malignant_auroc": "AUROC benign vs malignant",
    "ece": "Calibration error (ECE)", "sensitivity": "Sensitivity",
}
# The numbers a reader looks for first, per task: (group, metric) in metrics.json.
HEADLINES = {
    "segmentation": (("lesion", "dice"), ("lesion", "iou")),
    "classification": (("all", "accuracy"), ("all", "macro_auroc"),
                       ("all", "benign_vs_malignant_auroc")),
}
PER_CLASS = ("precision", "recall", "f1", "auroc")
CLASSIFICATION_FIGURES = (
    ("confusion_matrix.png", "Confusion matrix of the test images: rows are the truth, "
                             "columns the prediction."),
    ("roc.png", "ROC curves, one class against the rest; dashed: benign against malignant."),
    ("reliability.png", "Reliability: accuracy against top-class confidence in bins, with "
                        "the confidences' histogram below."),
)
OVERLAY_NAME = re.compile(r"^rank(\d+)_dice([0-9.]+|nan)_(.+)\.png$")


def metric_label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


def headlines(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(label, {mean, ci_low, ci_high}) of the run's headline metrics, task by task."""
    found = []
    for part in run.parts:
        groups = part.metrics.get("groups", {})
        for group, metric in HEADLINES.get(part.task, ()):
            group = group if group in groups else "all"
            stat = groups.get(group, {}).get(metric)
            if isinstance(stat, dict):
                scope = " · lesion images" if group == "lesion" else ""
                found.append((metric_label(metric) + scope, stat))
    return found


def summary_section(runs: Sequence[Run]) -> Html:
    """The runs side by side, one column each: model, task, test images and the headline
    numbers with 95 % CIs."""
    per_run = [dict(headlines(run)) for run in runs]
    labels = list(dict.fromkeys(label for values in per_run for label in values))
    rows = [["Model", *(run.model for run in runs)],
            ["Task", *(run.meta["task"] for run in runs)],
            ["Test images", *(number(run.evaluation.get("n_images")) for run in runs)],
            *([label, *(estimate(**_interval(values[label])) if label in values
                        else tag("span", "–", class_="na") for values in per_run)]
              for label in labels)]
    header = ["", *(tag("a", f"{index}. {run.name}", href=f"#run-{index}")
                    for index, run in enumerate(runs, start=1))]
    return tag("section", join([
        tag("h2", "Summary"),
        tag("p", join(["Headline numbers of each run on its own test evaluation: estimate with "
                       "95 % CI. Runs compare fairly only on the same test images; for paired "
                       "tests use ", tag("code", "sonocad compare"), "."], sep=""),
            class_="lead"),
        table(header, rows, caption="Headline metrics of each run",
              numeric=range(1, len(header)))]), class_="block", id="summary")


def run_section(index: int, run: Run, examples: list[Example] | str) -> Html:
    """Everything about one run; `examples` are its heatmaps, or the reason there are none."""
    split = run.evaluation.get("split", "an unrecorded subset")
    blocks = [
        tag("h2", join([f"{index}. {run.name}", tag("span", run.meta["task"], class_="tag")],
                       sep="")),
        tag("p", join([f"{run.model}, evaluated on ", tag("code", split), " · run folder ",
                       tag("code", run.folder)], sep=""), class_="lead"),
        cards((label, estimate(**_interval(stat))) for label, stat in headlines(run)),
        _data(run),
        _training(run),
        *(_results(run, part) for part in run.parts),
        *(_breakdown(table) for table in run.evaluation.get("breakdowns", {}).values()),
        _examples(examples),
        _card(run),
    ]
    return tag("section", join(blocks), class_="block", id=f"run-{index}")


# --- data and training ---------------------------------------------------------------------

def _data(run: Run) -> Html:
    data, labels = run.meta.get("data", {}), Counter(row["label"] for row in run.predictions)
    provenance = [
        ("Data set", _code(data.get("path")) if data.get("path") else "not recorded"),
        ("Split file", _code(data.get("split")) if data.get("split") else "not recorded"),
        ("Training images", _count(data.get("n_train"), data.get("train_subsets") or [])),
        ("Validation images", _count(data.get("n_val"), [data.get("val_subset")])),
        ("Test images", join([_count(run.evaluation.get("n_images"), []), " from ",
                              tag("code", run.evaluation.get("split", "?"))], sep="")),
        ("Classes", ", ".join(run.meta.get("class_names", [])) or "none"),
        ("Input", describe_transform(run.meta.get("transform", {}))),
        ("Data fingerprint", _code(str(data.get("fingerprint", "not recorded"))[:16])),
    ]
    lesions = Counter(row["label"] for row in run.predictions if row.get("truth_lesion"))
    with_lesion = any("truth_lesion" in row for row in run.predictions)
    order = [*run.meta.get("class_names", []), *sorted(set(labels) - set(
        run.meta.get("class_names", [])), key=str)]
    rows = [[str(label), number(labels[label]), f"{labels[label] / len(run.predictions):.0%}",
             *([number(lesions[label])] if with_lesion else [])]
            for label in order if labels[label]]
    return join([
        tag("h3", "Data"),
        table(None, provenance, caption="Training data, split and input, as recorded in "
                                        "best.pt and the evaluation"),
        table(["Class", "Images", "Share", *(["With a lesion mask"] if with_lesion else [])],
              rows, caption="Test images by class (the evaluation's predictions table)",
              numeric=range(1, 4))])


def _training(run: Run) -> Html:
    blocks: list[object] = [tag("h3", "Training")]
    if run.history:
        select = run.meta.get("select_metric")
        curves = training_curves(run.history, select, run.meta.get("epoch"))
        blocks.append(figure(figure_uri(curves), "Training curves from metrics.csv: loss "
                             "(left) and validation metrics (right) per epoch; the dotted line "
                             f"marks the epoch kept as best.pt (validation {select}).",
                             alt="training curves", wide=True))
    else:
        blocks.append(note(f"No metrics.csv in {run.folder}: the training curves are not "
                           "available."))
    facts = [f"Selection: {selection(run.meta)}."]
    if run.summary:
        facts.append(f"Training ran {run.summary.get('steps', '?')} steps over "
                     f"{run.summary.get('epochs', '?')} epochs in "
                     f"{run.summary.get('minutes', '?')} minutes.")
    blocks.append(tag("p", " ".join(facts)))
    at_selection = run.meta.get("metrics") or {}
    if at_selection:
        blocks.append(table(["", *map(metric_label, at_selection)],
                            [["best.pt", *map(number, at_selection.values())]],
                            caption="Validation metrics of the selected weights",
                            numeric=range(1, len(at_selection) + 1)))
    return join(blocks)


# --- results -------------------------------------------------------------------------------

def _results(run: Run, part: Part) -> Html:
    title = "Results" if len(run.parts) == 1 else f"Results: {part.task}"
    body = (_segmentation(part) if part.task == "segmentation" else
            _classification(part) if part.task == "classification" else
            _detection(part) if part.task == "detection" else
            _groups(part, f"{part.task} metrics with 95 % CI, by image group"))
    return join([tag("h3", title), tag("p", f"How: {part.metrics.get('reduction', '?')}.",
                                       class_="small"), body])


def _groups(part: Part, caption: str) -> Html:
    """Every metric of metrics.json (rows) in every image group (columns), with its CI."""
    groups = part.metrics.get("groups", {})
    metrics = list(dict.fromkeys(k for stats in groups.values() for k, v in stats.items()
                                 if isinstance(v, dict)))
    header = ["Metric", *(f"{name} images (n = {stats.get('n_images', '?')})"
                          for name, stats in groups.items())]
    rows = [[metric_label(m), *(estimate(**_interval(stats[m])) if m in stats else "–"
                                for stats in groups.values())] for m in metrics]
    return table(header, rows, numeric=range(1, len(header)), caption=caption)


def _breakdown(result: dict[str, Any]) -> Html:
    """Each source / scanner apart and pooled (rows), the headline figures (columns)."""
    groups = result["groups"]
    shown = [(key, head) for key, head in BREAKDOWN_COLUMNS
             if any(key in figures for figures in groups.values())]
    rows = [[name, number(figures["n_images"]),
             *(estimate(**_interval(figures[key])) if key in figures else "–"
               for key, _ in shown)] for name, figures in groups.items()]
    return join([tag("h3", f"Results by {result['by']}"),
                 table([result["by"].capitalize(), "Images", *(head for _, head in shown)],
                       rows, numeric=range(1, len(shown) + 2),
                       caption=f"Per {result['by']} and pooled, with 95 % CIs over "
                               f"{groups[POOLED]['ci_unit']}; lesion figures over lesion "
                               "images")])


def _segmentation(part: Part) -> Html:
    blocks = [_groups(part, "Per-image segmentation metrics: mean over images with 95 % "
                            "bootstrap CI, for all images and for those with and without a "
                            "lesion")]
    pooled = part.metrics.get("pooled_confusion")
    if pooled:
        blocks.append(table(["", "Predicted lesion", "Predicted background"],
                            [["True lesion", number(pooled["tp"]), number(pooled["fn"])],
                             ["True background", number(pooled["fp"]), number(pooled["tn"])]],
                            caption="Pixel confusion matrix pooled over all test images "
                                    "(pixel counts)", numeric=[1, 2]))
    blocks.append(_overlays(part.folder / "overlays"))
    return join(blocks)


def _detection(part: Part) -> Html:
    """AP and AUROC with CIs, the precision-recall curves and the drawn example detections."""
    blocks = [_groups(part, "Box and mask AP (95 % bootstrap CI over images) and the "
                            "image-level AUROC of the malignancy score (DeLong 95 % CI)")]
    curve = part.folder / "precision_recall.png"
    if curve.is_file():
        blocks.append(figures([figure(file_uri(curve), "Box precision-recall per class at IoU "
                                      "0.5, over every truth lesion.", alt="precision-recall")]))
    drawn = sorted((part.folder / "examples").glob("*.png"))
    if drawn:
        blocks += [tag("h4", "Example detections"),
                   tag("p", "Lesion images from the lowest to the highest malignancy score: "
                            "truth outlined in green, found instances in their boxes with "
                            "class and score.", class_="small"),
                   figures(figure(file_uri(path, max_side=360), path.stem.replace("_", " "),
                                  alt="example detection") for path in drawn)]
    return join(blocks)


def _overlays(folder: Path) -> Html:
    """The worst, median and best of the overlays `sonocad evaluate` drew, by Dice rank."""
    ranked = sorted(((match, path) for path in folder.glob("*.png")
                     if (match := OVERLAY_NAME.match(path.name))),
                    key=lambda found: int(found[0].group(1)))
    if not ranked:
        return note(f"No overlays in {folder} (evaluate with --overlays 3 or more to show the "
                    "worst, median and best cases).")
    names: dict[int, str] = {}  # position in `ranked` -> its name; with few drawn, one each
    for name, position in (("worst", 0), ("best", len(ranked) - 1),
                           ("median", len(ranked) // 2)):
        names.setdefault(position, name)
    items = [figure(file_uri(path, max_side=360),
                    f"{names[k].capitalize()} of those drawn: Dice {match.group(2)}, "
                    f"{match.group(3)} (rank {int(match.group(1))} by Dice, lowest first).",
                    alt=f"{names[k]} case overlay")
             for k in sorted(names) for match, path in [ranked[k]]]
    return join([tag("h4", "Worst, median and best cases"),
                 tag("p", "Outlines on the test image: truth in green, prediction in red.",
                     class_="small"), figures(items)])


def _classification(part: Part) -> Html:
    stats = part.metrics.get("groups", {}).get("all", {})
    classes = part.metrics.get("class_names", [])
    per_class = {f"{stat}_{name}" for stat in PER_CLASS for name in classes}
    overall = [[metric_label(k), estimate(**_interval(v))] for k, v in stats.items()
               if isinstance(v, dict) and k not in per_class]
    support = part.metrics.get("support", {})
    class_rows = [[name, number(support.get(name)),
                   *(estimate(**_interval(stats[f"{stat}_{name}"]))
                     if f"{stat}_{name}" in stats else "–" for stat in PER_CLASS)]
                  for name in classes]
    present = [(png, caption) for png, caption in CLASSIFICATION_FIGURES
               if (part.folder / png).is_file()]
    blocks = [
        table(["Metric", "Estimate (95 % CI)"], overall, numeric=[1],
              caption=f"Classification of {stats.get('n_images', '?')} test images"),
        table(["Class", "Support", "Precision", "Recall", "F1", "AUROC"], class_rows,
              numeric=range(1, 6), caption="Per class, one against the rest (95 % CI)"),
        figures(figure(file_uri(part.folder / png), caption, alt=png.removesuffix(".png"))
                for png, caption in present),
    ]
    if len(present) < len(CLASSIFICATION_FIGURES):
        missing = [png for png, _ in CLASSIFICATION_FIGURES if not (part.folder / png).is_file()]
        blocks.append(note(f"Not found in {part.folder}: {', '.join(missing)}."))
    return join(blocks)


# --- heatmaps and the model card ----------------------------------------------------------

def _examples(examples: list[Example] | str) -> Html:
    title = tag("h3", "Where the model looked")
    if isinstance(examples, str):
        return join([title, note(examples)])
    if not examples:  # none asked for
        return Html("")
    what = ("its lesion probability" if examples[0].method == LESION_PROBABILITY
            else "the Grad-CAM of its predicted class")
    return join([title,
                 tag("p", f"Each test image (left) beside {what} (right; red is high).",
                     class_="small"),
                 figures(figure(image_uri(example.picture, max_side=640), example.caption,
                                alt="heatmap example") for example in examples)])


def _card(run: Run) -> Html:
    card, source = model_card(run)
    return join([tag("h3", "Model card"), tag("p", f"Source: {source}.", class_="small"),
                 tag("div", card, class_="model-card")])


# --- helpers -------------------------------------------------------------------------------

def _interval(stat: dict[str, Any]) -> dict[str, float | None]:
    return {"mean": stat.get("mean"), "low": stat.get("ci_low"), "high": stat.get("ci_high")}


def _count(n: int | None, subsets: Sequence[str | None]) -> Html:
    names = [name for name in subsets if name]
    text = number(n) if n is not None else escape("?")
    return Html(text + (escape(f" (subset {', '.join(names)})") if names else ""))


def _code(text: object) -> Html:
    return tag("code", text)
