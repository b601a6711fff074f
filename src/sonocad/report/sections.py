"""The report's sections: one per model (data, training, results, heatmaps, model card) and, for
several, a side-by-side table of their headline numbers.

Everything shown comes from files `sonocad train` and `sonocad evaluate` wrote; each table and
figure says what it was computed on, and each missing piece is named in a visible note rather
than left out silently. Figures of metrics.json that no section knows (a newer evaluate's) are
listed under "Further figures", so a new key shows rather than breaks the report.
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
from sonocad.io.outputs import output_stem
from sonocad.report.card import data_sets, describe_transform, model_card, selection
from sonocad.report.charts import training_curves, x_axis
from sonocad.report.classification import classification_results
from sonocad.report.examples import Example
from sonocad.report.figures import figure_uri, file_uri, image_uri
from sonocad.report.html import (
    Html,
    cards,
    escape,
    figure,
    figures,
    join,
    note,
    number,
    table,
    tag,
)
from sonocad.report.sources import Part, Run
from sonocad.report.values import (
    STRUCTURAL,
    footnote,
    is_stat,
    metric_label,
    not_applicable,
    stat,
)

# The numbers a reader looks for first, per task: (group, metric) in metrics.json.
HEADLINES = {
    "segmentation": (("lesion", "dice"), ("lesion", "iou")),
    "classification": (("all", "accuracy"), ("all", "macro_auroc"),
                       ("all", "benign_vs_malignant_auroc")),
}
# metrics.json keys the sections below show; any other figure goes to "Further figures".
SHOWN = {"task", "n_images", "reduction", "model", "split", "checkpoint", "class_names",
         "support", "groups", "confusion_matrix", "roc", "calibration", "pooled_confusion",
         "parts", "breakdowns"}
OVERLAY_NAME = re.compile(r"^rank(\d+)_dice([0-9.]+|nan)_(.+)\.png$")
EXAMPLE_NAME = re.compile(r"^rank(\d+)_(.+)\.png$")
OVERLAY_SIDE = 480  # pixels: a third of the printed width at print resolution
EXAMPLE_SIDE = 1000  # an image and its heatmap, the full printed width


def headlines(run: Run) -> list[tuple[str, dict[str, Any]]]:
    """(label, {mean, ci_low, ci_high}) of the run's headline metrics, task by task."""
    found = []
    for part in run.parts:
        groups = part.metrics.get("groups", {})
        for group, metric in HEADLINES.get(part.task, ()):
            group = group if group in groups else "all"
            value = groups.get(group, {}).get(metric)
            if isinstance(value, dict):
                scope = " · lesion images" if group == "lesion" else ""
                found.append((metric_label(metric) + scope, value))
    return found


def summary_section(runs: Sequence[Run]) -> Html:
    """The models side by side, one column each: model, task, test images and the headline
    numbers with 95 % CIs."""
    per_run = [dict(headlines(run)) for run in runs]
    labels = list(dict.fromkeys(label for values in per_run for label in values))
    rows = [["Model", *(run.model for run in runs)],
            ["Task", *(run.info.task for run in runs)],
            ["Test images", *(number(run.evaluation.get("n_images")) for run in runs)],
            *([label, *(stat(values[label]) if label in values
                        else tag("span", "–", class_="na") for values in per_run)]
              for label in labels)]
    header = ["", *(tag("a", f"{index}. {run.name}", href=f"#run-{index}")
                    for index, run in enumerate(runs, start=1))]
    return tag("section", join([
        tag("h2", "Summary"),
        tag("p", join(["Headline numbers of each model on its own test evaluation: estimate "
                       "with 95 % CI. Models compare fairly only on the same test images; for "
                       "paired tests use ", tag("code", "sonocad compare"), "."], sep=""),
            class_="lead"),
        table(header, rows, caption="Headline metrics of each model",
              numeric=range(1, len(header)))]), class_="block", id="summary")


def run_section(index: int, run: Run, examples: list[Example] | str, *,
                training: Html | None = None, kind: str | None = None) -> Html:
    """Everything about one model; `examples` are its heatmaps, or the reason there are none.
    `training` replaces the run's own training block (cross-validation's folds), `kind` the
    task in the heading's tag."""
    split = run.evaluation.get("split", "an unrecorded subset")
    where = ([" · run folder ", tag("code", run.folder)] if run.folder is not None else [])
    blocks = [
        tag("h2", join([f"{index}. {run.name}", tag("span", kind or run.info.task,
                                                    class_="tag")], sep="")),
        tag("p", join([f"{run.model}, evaluated on ", tag("code", split), " · evaluation ",
                       tag("code", run.evaluation_dir), *where], sep=""), class_="lead"),
        cards((label, stat(value)) for label, value in headlines(run)),
        _data(run),
        training if training is not None else _training(run),
        *(_results(run, part) for part in run.parts),
        *(_breakdown(result) for result in run.evaluation.get("breakdowns", {}).values()),
        _further(run.evaluation, run.evaluation_dir) if "parts" in run.evaluation
        else Html(""),
        _examples(examples),
        _card(run),
    ]
    return tag("section", join(blocks), class_="block", id=f"run-{index}")


# --- data and training ---------------------------------------------------------------------

def _data(run: Run) -> Html:
    data, labels = run.info.data, Counter(row["label"] for row in run.predictions)
    provenance = [
        ("Data set", _code(data_sets(data)) if data_sets(data) else "not recorded"),
        ("Split file", _code(data.get("split")) if data.get("split") else "not recorded"),
        *([("Training and validation images", "each fold's model trained on the other "
                                               "folds and was selected on its own")]
          if run.pooled else
          [("Training images", _count(data.get("n_train"), data.get("train_subsets") or [])),
           ("Validation images", _count(data.get("n_val"), [data.get("val_subset")]))]),
        ("Test images", join([_count(run.evaluation.get("n_images"), []), " from ",
                              tag("code", run.evaluation.get("split", "?"))], sep="")),
        ("Classes", ", ".join(run.info.class_names) or "none"),
        ("Input", describe_transform(run.info.transform)),
        ("Data fingerprint", _code(str(data.get("fingerprint", "not recorded"))[:16])),
    ]
    lesions = Counter(row["label"] for row in run.predictions if row.get("truth_lesion"))
    with_lesion = any("truth_lesion" in row for row in run.predictions)
    order = [*run.info.class_names, *sorted(set(labels) - set(run.info.class_names), key=str)]
    rows = [[str(label), number(labels[label]), f"{labels[label] / len(run.predictions):.0%}",
             *([number(lesions[label])] if with_lesion else [])]
            for label in order if labels[label]]
    return join([
        tag("h3", "Data"),
        table(None, provenance, caption="Training data, split and input, as recorded in "
                                        "the checkpoint and the evaluation"),
        table(["Class", "Images", "Share", *(["With a lesion mask"] if with_lesion else [])],
              rows, caption="Test images by class (the evaluation's predictions table)",
              numeric=range(1, 4))])


def _training(run: Run) -> Html:
    blocks: list[object] = [tag("h3", "Training")]
    if run.folder is None:
        blocks.append(note(f"No training run folder: {run.evaluation_dir} evaluates "
                           f"{run.model_file}, so there are no training curves; below is what "
                           "the checkpoint records of its training."))
    elif run.history or run.steps:
        blocks.append(training_figure(run))
    else:
        blocks.append(note(f"No metrics.csv in {run.folder}: the training curves are not "
                           "available."))
    facts = [f"Selection: {selection(run.info)}."]
    if run.summary:
        facts.append(ran(run.summary))
    blocks.append(tag("p", " ".join(facts)))
    at_selection = {key: value for key, value in run.info.metrics.items()
                    if isinstance(value, int | float)}
    if at_selection:
        blocks.append(table(["Validation metric", "best.pt"],
                            [[metric_label(key), number(value)]
                             for key, value in at_selection.items()],
                            caption="Validation metrics of the selected weights", numeric=[1]))
    return join(blocks)


def training_figure(run: Run) -> Html:
    """The run's curves against epochs, or against steps for a short run or one whose
    per-step loss (steps.csv) is there."""
    select = run.info.select_metric
    x = "step" if run.steps else x_axis([run.history])
    best = run.info.step if x == "step" else run.info.epoch
    curves = training_curves(run.history, run.steps, select, best, x)
    per_step = "; grey: each logged step's training loss, from steps.csv" if run.steps else ""
    return figure(figure_uri(curves), f"Training curves: the losses (top{per_step}) and "
                  f"validation metrics (bottom) at each validation (metrics.csv), against "
                  f"{'optimiser steps' if x == 'step' else 'epochs'}; the dotted line marks "
                  f"the weights kept as best.pt (validation {select}).",
                  alt="training curves", wide=True)


def ran(summary: dict[str, Any]) -> str:
    """'Training ran 20 optimiser steps (less than one epoch) in 0.4 minutes.'"""
    epochs = summary.get("epochs")
    span = ("less than one epoch" if epochs == 0 else
            f"{epochs} complete epoch{'s' if epochs != 1 else ''}" if epochs is not None
            else "an unrecorded number of epochs")
    return (f"Training ran {summary.get('steps', '?')} optimiser steps ({span}) in "
            f"{summary.get('minutes', '?')} minutes.")


# --- results -------------------------------------------------------------------------------

def _results(run: Run, part: Part) -> Html:
    title = "Results" if len(run.parts) == 1 else f"Results: {part.task}"
    body = (_segmentation(run, part) if part.task == "segmentation" else
            classification_results(part, run.predictions) if part.task == "classification"
            else _detection(run, part) if part.task == "detection" else
            _groups(part, f"{part.task} metrics with 95 % CI, by image group"))
    return join([tag("h3", title), tag("p", f"How: {part.metrics.get('reduction', '?')}.",
                                       class_="small"), body, _further(part.metrics, part.folder)])


def _groups(part: Part, caption: str) -> Html:
    """Every metric of metrics.json (rows) in every image group (columns), with its CI; a
    figure fixed by construction in a group reads n/a, with the reason below."""
    groups = part.metrics.get("groups", {})
    metrics = list(dict.fromkeys(k for figures in groups.values() for k, v in figures.items()
                                 if isinstance(v, dict)))
    reasons: list[str] = []  # the footnote's, in the order their cells come

    def cell(group: str, metric: str) -> Html | str:
        if metric not in groups[group]:
            return "–"
        why = STRUCTURAL.get((group, metric))
        if why is None:
            return stat(groups[group][metric])
        if why not in reasons:
            reasons.append(why)
        return not_applicable("*" * (reasons.index(why) + 1))

    header = ["Metric", *(f"{name} images (n = {figures.get('n_images', '?')})"
                          for name, figures in groups.items())]
    rows = [[metric_label(m), *(cell(group, m) for group in groups)] for m in metrics]
    return join([table(header, rows, numeric=range(1, len(header)), caption=caption),
                 footnote({"*" * (k + 1): why for k, why in enumerate(reasons)})])


def _breakdown(result: dict[str, Any]) -> Html:
    """Each source / scanner apart and pooled (rows), the headline figures (columns)."""
    groups = result["groups"]
    shown = [(key, head) for key, head in BREAKDOWN_COLUMNS
             if any(key in figures for figures in groups.values())]
    rows = [[name, number(figures["n_images"]),
             *(stat(figures[key]) if key in figures else "–" for key, _ in shown)]
            for name, figures in groups.items()]
    return join([tag("h3", f"Results by {result['by']}"),
                 table([result["by"].capitalize(), "Images", *(head for _, head in shown)],
                       rows, numeric=range(1, len(shown) + 2),
                       caption=f"Per {result['by']} and pooled, with 95 % CIs over "
                               f"{groups[POOLED]['ci_unit']}; lesion figures over lesion "
                               "images")])


def _further(metrics: dict[str, Any], folder: Path) -> Html:
    """Figures under metrics.json keys no section shows (lesion-level detection, a newer
    evaluate's additions), each named by its path, and the PNG files they name in `folder`."""
    found: list[tuple[str, dict[str, Any]]] = []
    drawn: list[tuple[str, Path]] = []

    def walk(path: list[str], value: object, depth: int) -> None:
        if isinstance(value, dict) and is_stat(value):
            found.append((" · ".join(path), value))
        elif isinstance(value, dict) and depth < 4:
            for key, inner in value.items():
                walk([*path, metric_label(str(key))], inner, depth + 1)
        elif isinstance(value, str) and value.endswith(".png") and (folder / value).is_file():
            drawn.append((" · ".join(path[:-1]), folder / value))

    for key, value in metrics.items():
        if key not in SHOWN:
            walk([metric_label(key)], value, 1)
    rows = [[label, stat(value), number(value.get("n"))] for label, value in found]
    return join([
        table(["Figure", "Estimate (95 % CI)", "n"], rows, numeric=[1, 2],
              caption="Further figures in metrics.json") if rows else Html(""),
        *(figure(file_uri(path), join([f"{label.capitalize()}: {path.name}, as ",
                                        tag("code", "sonocad evaluate"), " drew it."], sep=""),
                 alt=label, wide=True) for label, path in drawn)])


def _segmentation(run: Run, part: Part) -> Html:
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
    if not run.pooled:  # out-of-fold tables draw none: no one model made every case
        blocks.append(_overlays(part.folder / "overlays", image_ids(run)))
    return join(blocks)


def _detection(run: Run, part: Part) -> Html:
    """AP and AUROC with CIs, the precision-recall curves and the drawn example detections."""
    blocks = [_groups(part, "Box and mask AP (95 % bootstrap CI over images) and the "
                            "image-level AUROC of the malignancy score (DeLong 95 % CI)")]
    curve = part.folder / "precision_recall.png"
    if curve.is_file():
        blocks.append(figure(file_uri(curve), "Box precision-recall per class at IoU 0.5, "
                             "over every truth lesion.", alt="precision-recall", wide=True))
    drawn = sorted((part.folder / "examples").glob("*.png"))
    if drawn:
        ids = image_ids(run)
        blocks += [tag("h4", "Example detections"),
                   tag("p", "Lesion images from the lowest to the highest malignancy score: "
                            "truth outlined in green, found instances in their boxes with "
                            "class and score.", class_="small"),
                   figures(figure(file_uri(path, max_side=OVERLAY_SIDE),
                                  _image_id(EXAMPLE_NAME, path, 2, ids),
                                  alt="example detection") for path in drawn)]
    return join(blocks)


def _overlays(folder: Path, ids: dict[str, str]) -> Html:
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
    items = [figure(file_uri(path, max_side=OVERLAY_SIDE),
                    f"{names[k].capitalize()} of those drawn: "
                    f"{_image_id(OVERLAY_NAME, path, 3, ids)}, Dice {match.group(2)} (rank "
                    f"{int(match.group(1))} by Dice, lowest first).",
                    alt=f"{names[k]} case overlay")
             for k in sorted(names) for match, path in [ranked[k]]]
    return join([tag("h4", "Worst, median and best cases"),
                 tag("p", "Outlines on the test image: truth in green, prediction in red.",
                     class_="small"), figures(items)])


def image_ids(run: Run) -> dict[str, str]:
    """The file-name stem `sonocad evaluate` gave each image's picture -> the image's id, so a
    caption reads 'benign (196).png' rather than 'benign_(196)'."""
    ids = {}
    for row in run.predictions:
        image_id = str(row["image_id"])
        for stem in (output_stem(Path(image_id).name), Path(image_id).stem):
            ids[stem.replace(" ", "_")] = image_id
    return ids


def _image_id(pattern: re.Pattern[str], path: Path, group: int, ids: dict[str, str]) -> str:
    stem = match.group(group) if (match := pattern.match(path.name)) else path.stem
    return ids.get(stem, stem)


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
                 tag("p", join([f"Each test image (left) beside {what} (right), in the "
                                "colours of ", tag("code", "sonocad predict"), "'s heatmaps: "
                                "inferno, bright is high, with its colour bar."], sep=""),
                     class_="small"),
                 *(figure(image_uri(example.picture, max_side=EXAMPLE_SIDE), example.caption,
                          alt="heatmap example", wide=True) for example in examples)])


def _card(run: Run) -> Html:
    card, source = model_card(run)
    return join([tag("h3", "Model card"), tag("p", f"Source: {source}.", class_="small"),
                 tag("div", card, class_="model-card")])


# --- helpers -------------------------------------------------------------------------------

def _count(n: int | None, subsets: Sequence[str | None]) -> Html:
    names = [name for name in subsets if name]
    text = number(n) if n is not None else escape("?")
    return Html(text + (escape(f" (subset {', '.join(names)})") if names else ""))


def _code(text: object) -> Html:
    return tag("code", text)
