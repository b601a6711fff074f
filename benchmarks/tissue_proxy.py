"""Is "normal" the same call on every scanner? A proxy from lesion-free windows of test images.

Usage: python benchmarks/tissue_proxy.py [CKPT ...] [--subset test] [--json FILE]
       (no CKPT: the bundled default model)

Normal images come from one scanner only (BUSI). Every lesion image, from any scanner, is mostly
normal tissue: a window of it that keeps clear of the lesion (drawn as `data.views` draws
training windows: each side 30-70 % of the image's, 5 % of the side clear of the lesion's box;
seeded per image, so every model is shown the same windows) is a lesion-free view from that
image's scanner. Per source and scanner of the frozen subsets, for each checkpoint, this prints
the share of such windows whose final call is normal (and of the raw class head), with 95 %
Clopper-Pearson CIs, and the share flagged low-confidence; and beside them the share of the
whole lesion images called normal, so that a model cannot look good here by calling everything
normal. What it can tell: whether the normal call depends on the scanner. What it cannot: a
window is not a whole healthy breast (another field of view and zoom, no nipple or chest wall
in view), and the tissue beside a lesion is not a healthy woman's. A proxy, never trained on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from _common import SOURCES, machine_line, subset_samples
from sonocad.data.sample import LESION_CLASSES, Sample
from sonocad.data.views import ViewConfig, tissue_view
from sonocad.evaluation.statistics import proportion
from sonocad.inference.predictor import Predictor

WINDOWS = ViewConfig(p=1.0, scale=(0.3, 0.7), margin=0.05)
SEED = 20261206


def lesion_samples(name: str, subset: str) -> list[Sample]:
    return [s for s in subset_samples(name, subset) if s.label in LESION_CLASSES]


def calls(predictor: Predictor, samples: list[Sample]) -> list[dict[str, Any]]:
    """Per lesion image: its scanner, and the calls on the whole image and on its window."""
    records = []
    for index, sample in enumerate(samples):
        pixels = sample.load_image().pixels
        mask = sample.load_mask(pixels.shape[:2])
        view = tissue_view(pixels, mask, WINDOWS, np.random.default_rng([SEED, index]))
        images = [pixels] if view is None else [pixels, view.pixels]
        predictions = predictor.predict(images)
        record = {"scanner": sample.scanner or "all", "whole": _call(predictions[0])}
        if view is not None:
            record["window"] = _call(predictions[1])
        records.append(record)
    return records


def _call(prediction) -> dict[str, Any]:
    probabilities = prediction.class_probabilities
    decision = prediction.decision
    return {"raw": max(probabilities, key=probabilities.__getitem__),
            "final": decision.final_class if decision else None,
            "flagged": bool(decision.low_confidence) if decision else False}


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["scanner"]].append(record)
        if record["scanner"] != "all":
            groups["all"].append(record)
    table = {}
    for scanner, rows in sorted(groups.items()):
        windows = [r["window"] for r in rows if "window" in r]
        table[scanner] = {
            "windows called normal (final)": proportion(
                sum(w["final"] == "normal" for w in windows), len(windows)),
            "windows called normal (class head)": proportion(
                sum(w["raw"] == "normal" for w in windows), len(windows)),
            "windows flagged": proportion(sum(w["flagged"] for w in windows), len(windows)),
            "whole lesion images called normal (final)": proportion(
                sum(r["whole"]["final"] == "normal" for r in rows), len(rows)),
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="*", type=Path)
    parser.add_argument("--subset", default="test")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    models = {str(path): Predictor(path) for path in args.checkpoints} or {
        "bundled default": Predictor.default()}
    print(f"Lesion-free windows of the {args.subset} subsets — {machine_line()}\n")
    print("| model | source | scanner | measure | share (95 % CI) | n |")
    print("| --- | --- | --- | --- | --- | --- |")
    figures: dict[str, Any] = {}
    for model, predictor in models.items():
        for source in SOURCES:
            table = summarise(calls(predictor, lesion_samples(source, args.subset)))
            figures.setdefault(model, {})[source] = {
                scanner: {measure: dataclasses.asdict(p) for measure, p in row.items()}
                for scanner, row in table.items()}
            for scanner, row in table.items():
                for measure, p in row.items():
                    print(f"| {model} | {source} | {scanner} | {measure} | {p.estimate:.3f} "
                          f"({p.ci_low:.3f}-{p.ci_high:.3f}) | {p.total} |")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
