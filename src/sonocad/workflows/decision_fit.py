"""Choose a multitask model's decision rule and confidence flag on validation images.

`score_images` runs the model once over labelled samples and keeps, per image, what the rule
and the flag need (class probabilities, predicted lesion share, every candidate uncertainty
score, lesion IoU). `fit_rule` then picks, on those validation records only:

- ``min_lesion_fraction``: the smallest predicted-lesion share of the image that overrules a
  "normal" call, and ``min_presence_fraction``: the share below which a lesion call becomes
  "normal" (at most the former), both from `FRACTIONS`, maximising macro-F1 of the final calls
  while at least `min_normal_recall` of the normal images stay normal and, where a lesion call
  may be overruled, at most `max_lesion_missed` of the lesion images become normal (the rule
  that overrules nothing is always allowed);
- the uncertainty score (of `decision.SCORES`) with the highest AUROC for a failure (lesion
  IoU < 0.5 on a lesion image, or a wrong final call), and the threshold with the highest
  Youden J among those flagging at most `MAX_FLAGGED` of the images (a flag on half of all
  images, where the unconstrained J lands, is one nobody reads);
- the malignancy scaling: Platt's logistic fit of "malignant" on the logit of the class head's
  P(malignant) / (P(benign) + P(malignant)) over the validation lesion images, and the
  rule-out point: the lowest calibrated P(malignant) that still keeps at least
  `RULE_OUT_SENSITIVITY` of the malignant images out of rule-out (a malignant image whose final
  call is normal is already missed, so it spends the allowance first).

A fine-tuned model is refitted on the new scanner's validation images, often only a few dozen.
Where they hold fewer than `MIN_FLAG_FAILURES` failures (or lack a class for the malignancy
fit), no threshold can be read from them, and the flag (or the scaling) of the checkpoint the
model started from is kept, saying so in the fit's figures: never flagging at all is the
silent alternative.

`failure_auroc` scores a flag on any records, e.g. a scanner the model never saw.
`fit_run_decision` fits and stores the rule of a checkpoint `sonocad train` made.
`score_views` adds lesion-free windows of lesion images (`sonocad.data.views`) as normal
records: the normal images of every scanner in the validation data, where only one data set has
whole normal images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_curve

from sonocad.checkpoint import Checkpoint, bundled_checkpoint, load_checkpoint, save_checkpoint
from sonocad.data.sample import LESION_CLASSES, Sample
from sonocad.data.sources import DataArg, resolve_sources
from sonocad.data.split import read_split, select
from sonocad.data.views import ViewConfig, tissue_view
from sonocad.engine.recipe import Recipe
from sonocad.evaluation.classification import rank_auroc
from sonocad.evaluation.segmentation import confusion, overlap_metrics
from sonocad.inference.decision import (
    SCORES,
    DecisionRule,
    final_call,
    logit,
    malignancy,
    malignancy_ratio,
)
from sonocad.inference.predictor import Predictor
from sonocad.predictions import Prediction
from sonocad.workflows.evaluate import predict_samples

FRACTIONS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, math.inf)
PRESENCE_FRACTIONS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01)
MAX_LESION_MISSED = 0.01
FAILURE_IOU = 0.5
MAX_FLAGGED = 0.2
RULE_OUT_SENSITIVITY = 0.98
MIN_FLAG_FAILURES = 5


@dataclass(frozen=True)
class ImageRecord:
    label: str
    probabilities: dict[str, float]
    lesion_fraction: float  # predicted lesion pixels / image pixels
    scores: dict[str, float]  # every candidate uncertainty score
    iou: float | None  # lesion images only


def score_images(predictor: Predictor, samples: Sequence[Sample], *,
                 batch_size: int = 8) -> list[ImageRecord]:
    records = []
    for sample, image, prediction in predict_samples(predictor, list(samples), batch_size):
        truth = sample.load_mask(image.pixels.shape[:2])
        has_lesion = truth is not None and bool(truth.any())
        iou = overlap_metrics(confusion(truth, prediction.mask))["iou"] if has_lesion else None
        records.append(_record(sample.label, prediction, iou))
    return records


def _record(label: str, prediction: Prediction, iou: float | None) -> ImageRecord:
    lesion, probabilities = prediction.lesion_probability, prediction.class_probabilities
    return ImageRecord(label=label, probabilities=probabilities,
                       lesion_fraction=float(prediction.mask.mean()),
                       scores={name: score(probabilities, lesion)
                               for name, score in SCORES.items()},
                       iou=iou)


def score_views(predictor: Predictor, samples: Sequence[Sample], config: ViewConfig, *,
                seed: int = 0) -> list[ImageRecord]:
    """A normal record for a lesion-free window of each lesion image in `samples` (seeded by
    `seed` and the image's position, so each fit sees the same windows)."""
    records = []
    for index, sample in enumerate(samples):
        if sample.label not in LESION_CLASSES:
            continue
        pixels = sample.load_image().pixels
        mask = sample.load_mask(pixels.shape[:2])
        view = tissue_view(pixels, mask, config, np.random.default_rng([seed, index]))
        if view is None:
            continue
        (prediction,) = predictor.predict([view.pixels])
        records.append(_record("normal", prediction, None))
    return records


def final_classes(records: Sequence[ImageRecord], rule: DecisionRule) -> list[str]:
    return [final_call(rule, r.probabilities, r.lesion_fraction)[0] for r in records]


def failures(records: Sequence[ImageRecord], calls: Sequence[str]) -> np.ndarray:
    return np.array([(r.iou is not None and r.iou < FAILURE_IOU) or call != r.label
                     for r, call in zip(records, calls, strict=True)])


def failure_auroc(records: Sequence[ImageRecord], calls: Sequence[str], score: str) -> float:
    return rank_auroc(failures(records, calls), np.array([r.scores[score] for r in records]))


def flag_threshold(failed: np.ndarray, scores: np.ndarray,
                   max_flagged: float = MAX_FLAGGED) -> float:
    """The ROC threshold (flag when score >= it) of highest Youden J flagging at most
    `max_flagged` of the images; never flag (inf) without both outcomes."""
    if not 0 < failed.sum() < len(failed):
        return math.inf
    fpr, tpr, thresholds = roc_curve(failed, scores)
    flagged = np.array([(scores >= t).mean() for t in thresholds])
    j = np.where(flagged <= max_flagged, tpr - fpr, -np.inf)
    best = int(np.argmax(j))
    return float(thresholds[best]) if np.isfinite(j[best]) else math.inf


def fit_rule(records: Sequence[ImageRecord], *, min_normal_recall: float = 0.9,
             max_lesion_missed: float = MAX_LESION_MISSED, chosen_on: str = "validation",
             fallback: DecisionRule | None = None) -> tuple[DecisionRule, dict[str, Any]]:
    """The rule and flag chosen on `records`, and every candidate's figures (for the card);
    `fallback`'s flag and malignancy scaling where `records` are too few to fit them."""
    labels = [r.label for r in records]
    normal = np.array([label == "normal" for label in labels])
    lesion = np.array([label in LESION_CLASSES for label in labels])
    table, best = [], None
    for fraction in FRACTIONS:
        for presence in [p for p in PRESENCE_FRACTIONS if p <= fraction]:
            calls = np.array(final_classes(records, _candidate(fraction, presence)))
            macro_f1 = float(f1_score(labels, calls, average="macro", zero_division=0))
            recall = float(np.mean(calls[normal] == "normal")) if normal.any() else math.nan
            missed = float(np.mean(calls[lesion] == "normal")) if lesion.any() else math.nan
            allowed = (math.isinf(fraction) and presence == 0) or (
                (not normal.any() or recall >= min_normal_recall)
                and (presence == 0 or not missed > max_lesion_missed))
            table.append({"min_lesion_fraction": None if math.isinf(fraction) else fraction,
                          "min_presence_fraction": presence, "macro_f1": macro_f1,
                          "normal_recall": recall, "lesion_called_normal": missed,
                          "allowed": allowed})
            if allowed and (best is None or macro_f1 > best[2]):
                best = (fraction, presence, macro_f1)
    fraction, presence, _ = best
    calls = final_classes(records, _candidate(fraction, presence))
    aurocs = {name: failure_auroc(records, calls, name) for name in SCORES}
    score = max(aurocs, key=lambda name: -1 if math.isnan(aurocs[name]) else aurocs[name])
    failed = failures(records, calls)
    threshold = flag_threshold(failed, np.array([r.scores[score] for r in records]))
    platt = fit_malignancy(records)
    kept = []
    if fallback is not None and failed.sum() < MIN_FLAG_FAILURES:
        score, threshold = fallback.score, fallback.flag_threshold
        kept.append(f"flag ({failed.sum()} failures on validation, fewer than "
                    f"{MIN_FLAG_FAILURES})")
    if fallback is not None and platt is None and fallback.malignancy is not None:
        platt = fallback.malignancy
        kept.append("malignancy scaling (validation lacks benign or malignant lesions)")
    if kept:
        chosen_on += "; kept from the model it started from: " + ", ".join(kept)
    rule = DecisionRule(fraction, score, threshold, chosen_on, presence, platt)
    rule = replace(rule, rule_out_below=rule_out_point(records, calls, rule))
    flagged = float(np.mean([r.scores[score] >= threshold for r in records]))
    return rule, {"fractions": table, "failure_auroc": aurocs, "n_images": len(records),
                  "n_failures": int(failed.sum()), "flagged_share": flagged,
                  **({"kept_from_init": kept} if kept else {})}


def fit_malignancy(records: Sequence[ImageRecord]) -> tuple[float, float] | None:
    """Platt scaling (slope, intercept) of the malignancy ratio's logit on the benign and
    malignant records; None without both classes or without the two class probabilities."""
    lesions = [(r.label == "malignant", ratio) for r in records
               if r.label in LESION_CLASSES
               and (ratio := malignancy_ratio(r.probabilities)) is not None]
    truth = np.array([malignant for malignant, _ in lesions])
    if not 0 < truth.sum() < len(truth):
        return None
    x = np.asarray(logit(np.array([ratio for _, ratio in lesions])))[:, None]
    fit = LogisticRegression(C=1e6).fit(x, truth)  # all but unpenalised, as Platt's
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def rule_out_point(records: Sequence[ImageRecord], calls: Sequence[str],
                   rule: DecisionRule) -> float | None:
    """The rule-out threshold on calibrated P(malignant) (rule out below it); None without
    malignant records or class probabilities."""
    scores = sorted(-math.inf if call == "normal" else p
                    for r, call in zip(records, calls, strict=True) if r.label == "malignant"
                    and (p := malignancy(rule, r.probabilities)) is not None)
    if not scores:
        return None
    allowed = math.floor((1 - RULE_OUT_SENSITIVITY) * len(scores) + 1e-9)
    return max(scores[allowed], 0.0)  # -inf (too many missed already): rule out normal only


def _initial_rule(package: Checkpoint) -> DecisionRule | None:
    """The decision rule of the checkpoint `package` was fine-tuned from, if it has one."""
    origin = (package.info.init or {}).get("from")
    if origin is None:
        return None
    source = bundled_checkpoint() if origin == "default" else load_checkpoint(origin)
    rule = source.info.decision
    return None if rule is None else DecisionRule.from_dict(rule)


def _candidate(fraction: float, presence: float) -> DecisionRule:
    return DecisionRule(fraction, "class_margin", math.inf, min_presence_fraction=presence)


def fit_run_decision(checkpoint: Path, recipe: Recipe, data: DataArg = None,
                     split: DataArg = None) -> DecisionRule:
    """Fit the decision rule of a trained multitask checkpoint on the validation subsets of
    the sources it was validated on (never a replay source, never test; with the recipe's
    ``data.views``, lesion-free windows of their lesion images join them as normal images),
    and write it into the checkpoint's meta (``decision``, ``decision_fit``). A fine-tuned
    checkpoint falls back on the rule of the one it started from (`fit_rule`)."""
    sources = [s for s in resolve_sources(recipe.data.sources, data, split, recipe.data.replay)
               if s.validated]
    samples = [sample for source in sources for sample in select(
        source.open(recipe.data.layout), read_split(source.split).subsets[recipe.data.val_subset])]
    package = load_checkpoint(checkpoint)
    predictor = Predictor(package)
    records = score_images(predictor, samples)
    views = recipe.data.views
    windows = (score_views(predictor, samples,
                           ViewConfig(1.0, 1.0, tuple(views.scale), views.margin))
               if views is not None and views.tissue > 0 else [])
    names = ", ".join(source.name for source in sources)
    rule, fit = fit_rule(records + windows, fallback=_initial_rule(package),
                         chosen_on=f"validation subsets of {names}: {len(samples)} images"
                                   + (f" and {len(windows)} lesion-free windows of their "
                                      "lesion images" if windows else ""))
    save_checkpoint(checkpoint, Checkpoint(
        {**package.meta, "decision": rule.to_dict(), "decision_fit": json.loads(json.dumps(fit))},
        package.state_dict))
    return rule
