"""Cross-scanner benchmark: how a model trained on some scanners does on scanners it never saw.

Usage:
  python benchmarks/cross_scanner.py --out runs/cross_scanner              # train 5, score 3 x 5
  python benchmarks/cross_scanner.py --out runs/cross_scanner --steps 300  # the schedule
  add --reuse to score runs already trained in --out (a run with summary.json is not retrained)
  ablations: --rows "BUS-BRA without Toshiba" --set augment.depth_gain=null --out runs/ablation

Rows are training sources, each trained with `recipes/default.yaml` (its model, input,
augmentation and loss) for the same number of steps, selected on its own sources' validation
subsets: BUSI only; BUS-BRA only; both; and BUS-BRA, or both, without the Toshiba Aplio 300
images (benchmarks/splits/busbra_without_toshiba.json: every Toshiba image, with its patient,
moved to `held_out`). Columns are test sets: the frozen BUSI and BUS-BRA test subsets and the
139 held-out Toshiba images, scored only for rows that never trained on a Toshiba image. Cells:
lesion IoU and Dice (lesion images), benign-vs-malignant AUROC and the share of lesion images
called normal, 95 % bootstrap CIs over patients (BUS-BRA) or images (BUSI) in results.json.
This is the project's honest proxy for "a scanner it has never seen".
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from _common import machine_line
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.workflows.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BUSI = DATASETS / "busi" / "Dataset_BUSI_with_GT"
BUSBRA = DATASETS / "busbra" / "BUSBRA"
SPLITS = ROOT / "benchmarks" / "splits"
RECIPE = ROOT / "recipes" / "default.yaml"

SOURCES = {
    "busi": {"name": "busi", "path": str(BUSI), "split": str(SPLITS / "busi.json")},
    "busbra": {"name": "busbra", "path": str(BUSBRA), "split": str(SPLITS / "busbra.json")},
    "busbra-t": {"name": "busbra", "path": str(BUSBRA),
                 "split": str(SPLITS / "busbra_without_toshiba.json")},
}
# row label -> (run folder, sources, saw a Toshiba image in training)
TRAININGS = {
    "BUSI": ("busi", ["busi"], False),
    "BUS-BRA": ("busbra", ["busbra"], True),
    "BUSI + BUS-BRA": ("both", ["busi", "busbra"], True),
    "BUS-BRA without Toshiba": ("busbra_wo_toshiba", ["busbra-t"], False),
    "BUSI + BUS-BRA without Toshiba": ("both_wo_toshiba", ["busi", "busbra-t"], False),
}
# column label -> (data, split:subset, needs a model that never saw this scanner)
TESTS = {
    "BUSI test": (BUSI, f"{SPLITS / 'busi.json'}:test", False),
    "BUS-BRA test": (BUSBRA, f"{SPLITS / 'busbra.json'}:test", False),
    "Toshiba, held out": (BUSBRA, f"{SPLITS / 'busbra_without_toshiba.json'}:held_out", True),
}
FIGURES = (("segmentation", "lesion", "iou", "IoU"), ("segmentation", "lesion", "dice", "Dice"),
           ("classification", "all", "benign_vs_malignant_auroc", "AUROC"),
           ("classification", "all", "lesion_called_normal", "called normal"))


def train_row(folder: Path, sources: list[str], steps: int, reuse: bool,
              overrides: list[str]) -> dict[str, Any]:
    if reuse and (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    recipe = load_recipe(RECIPE, [f"train.max_steps={steps}", "train.epochs=1000",
                                  "train.max_minutes=null", *overrides])
    recipe.data.sources = [SOURCES[name] for name in sources]
    train(recipe, None, None, folder, overwrite=True)
    return json.loads((folder / "summary.json").read_text())


def score(folder: Path, test: str, n_boot: int) -> dict[str, Any]:
    data, spec, _ = TESTS[test]
    out = folder / ("eval_" + test.split(",")[0].lower().replace(" ", "_").replace("-", ""))
    metrics = evaluate(folder / "best.pt", data, spec, out, overlays=0,
                       n_boot=n_boot, overwrite=True).metrics["parts"]
    return {label: metrics[part]["groups"][group].get(key)
            for part, group, key, label in FIGURES} | {
        "n_images": metrics["classification"]["n_images"]}


def cell(figures: dict[str, Any] | None, seen: bool) -> str:
    if figures is None:
        return "seen in training" if seen else "—"
    parts = []
    for _, _, _, label in FIGURES:
        stat = figures.get(label)
        if stat is None or stat["mean"] is None:
            continue
        value = stat["mean"]
        parts.append(f"{label} {value:.0%}" if label == "called normal" else
                     f"{label} {value:.3f}")
    return " · ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "cross_scanner")
    parser.add_argument("--steps", type=int, default=300, help="training steps per row (300)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--reuse", action="store_true", help="keep rows already trained")
    parser.add_argument("--rows", nargs="+", choices=list(TRAININGS), default=list(TRAININGS),
                        help="training rows to run (default: all)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every row (an ablation)")
    args = parser.parse_args()
    for path in (BUSI, BUSBRA):
        if not path.is_dir():
            raise SystemExit(f"{path}: data set not found (see ../shared/datasets/README.md)")
    torch.set_num_threads(2)
    results: dict[str, Any] = {"machine": machine_line(), "steps": args.steps,
                               "overrides": args.set, "batch_size": None, "rows": {}}
    for row in args.rows:
        name, sources, saw_toshiba = TRAININGS[row]
        folder = args.out / name
        summary = train_row(folder, sources, args.steps, args.reuse, args.set)
        results["batch_size"] = load_recipe(RECIPE).train.batch_size
        cells = {test: (None if needs_unseen and saw_toshiba else score(folder, test, args.n_boot))
                 for test, (_, _, needs_unseen) in TESTS.items()}
        results["rows"][row] = {"sources": sources, "minutes": summary["minutes"],
                                "validation": summary["best_value"], "cells": cells,
                                "saw_toshiba": saw_toshiba}
        print(f"{row}: trained {summary['minutes']:.1f} min", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{results['machine']}; recipes/default.yaml, {args.steps} steps "
          f"of batch {results['batch_size']} per row, selected on each row's validation "
          f"subsets{'; overrides ' + ' '.join(args.set) if args.set else ''}\n")
    print("| trained on | " + " | ".join(TESTS) + " |")
    print("| --- |" + " --- |" * len(TESTS))
    for row, result in results["rows"].items():
        print(f"| {row} | " + " | ".join(cell(result["cells"][test], result["saw_toshiba"])
                                          for test in TESTS) + " |")


if __name__ == "__main__":
    main()
