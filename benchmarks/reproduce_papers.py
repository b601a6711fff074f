"""Each paper's recipes trained on the frozen BUSI split, scored on its test subset, one table.

Usage:
  python benchmarks/reproduce_papers.py --out runs/papers --scale budget
  python benchmarks/reproduce_papers.py --out runs/papers --scale full --device cuda
  python benchmarks/reproduce_papers.py --out runs/papers --only u2netlite deepcardinal50
  python benchmarks/reproduce_papers.py --out runs/papers --table     # print what OUT holds
  python benchmarks/reproduce_papers.py --out runs/long --only deepcardinal50 --set train.epochs=30

Scales (how much of each recipe is trained; selection on the validation subset always, the
test subset scored once, 95 % CIs by bootstrap over images, DeLong for AUROC):
  smoke   1 step at 64 px from random weights on a few images of each class of each subset:
          proves every recipe trains, evaluates and lands in the table (the test suite runs it);
  budget  the CPU table: rows with a CPU budget (BUDGET below, about 45 minutes each on 2
          cores) train; the other rows are left out of the run (their models train at well
          under 1 image/s on a CPU: see `benchmarks/throughput.py`);
  full    every recipe as written (the papers' epochs and input sizes): for a GPU.
`--device cuda` trains on the GPU with mixed precision, channels_last and pinned memory; where
no GPU is found it says so and runs the same code on the CPU (AMP then stays off).

Each row writes OUT/<row>/result.json; the table is printed from every result.json in OUT, so
rows trained in separate runs (or on other machines) land in one table. Published figures are
those stated in the papers; the JMIR 2026 and QIMS 2023 data are not public, so those rows train
on BUSI and their figures are not comparable; the QIMS combined model runs on SYNTHETIC
clinical factors (BUSI has none) and shows that the pipeline runs, nothing about the method.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from _common import machine_line
from qims2023_combined import combine_on_synthetic
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.errors import SonocadError
from sonocad.evaluation.summary import format_ci
from sonocad.io.atomic import write_json
from sonocad.workflows.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
SPLIT = ROOT / "benchmarks" / "splits" / "busi.json"
RECIPES = ROOT / "recipes"
SCALES = ("smoke", "budget", "full")
# Random weights in smoke runs: ImageNet weights are a download, which a test may not make.
SMOKE = ["transform.input_size=64", "train.max_steps=1", "train.epochs=1",
         "train.batch_size=2", "train.eval_batch_size=2", "data.cache=false",
         "model.pretrained=null"]
# Images per class in the smoke split: the QIMS combined model fits its clinical MLP with
# nested 5-fold cross-validation, which needs 10 benign and 10 malignant train images.
SMOKE_PER_CLASS = {"train": 10, "val": 2, "test": 2}
# Sized to about 45 minutes each on 2 cores. U2-Net-lite: the paper's SGD schedule does not
# converge in 12 epochs, so Adam-style updates, a cosine schedule over the budget, 224 px and
# U2-Net's own BCE + Dice loss. DeepCardinal-50: the paper's recipe, cut to 12 epochs.
BUDGET = {
    "u2netlite": ["transform.input_size=224", "optimizer.name=adamw", "optimizer.lr=1e-3",
                  "optimizer.weight_decay=1e-4", "scheduler.name=warmup_cosine",
                  "loss.name=bce_dice", "train.epochs=12"],
    "deepcardinal50": ["train.epochs=12"],
    "resnet34": ["train.epochs=12"],  # the paper's baseline at the same budget (~20 minutes)
}
GPU = ["train.channels_last=true", "train.amp=true", "train.num_workers=4"]


@dataclass(frozen=True)
class Row:
    key: str  # the run folder and --only name
    paper: str
    model: str
    recipe: str  # file stem in recipes/
    published: str  # the paper's own figures, as stated there ("—": none for this model)


ROWS = (
    Row("u2net", "Front Oncol 2025", "U2-Net", "frontiers2025_u2net", "—"),
    Row("u2netlite", "Front Oncol 2025", "U2-Net-lite", "frontiers2025_u2netlite",
        "IoU 0.7063, precision 0.7512, recall 0.7961, pixel accuracy 0.9702"),
    Row("deepcardinal50", "Front Oncol 2025", "DeepCardinal-50 (ResNeXt-50 32x4d)",
        "frontiers2025_deepcardinal50", "accuracy 0.5641 independent test (0.9747 validation)"),
    Row("resnet34", "Front Oncol 2025", "ResNet-34, random init", "frontiers2025_resnet34", "—"),
    Row("resnet34_imagenet", "Front Oncol 2025", "ResNet-34, ImageNet",
        "frontiers2025_resnet34_imagenet", "—"),
    Row("resnet50", "Front Oncol 2025", "ResNet-50", "frontiers2025_resnet50", "—"),
    Row("alexnet", "Front Oncol 2025", "AlexNet", "frontiers2025_alexnet", "—"),
    Row("fcn101", "JMIR 2026 (on BUSI)", "FCN-ResNet101, weighted Dice", "jmir2026_fcn101",
        "not comparable (private HFUS data)"),
    Row("deeplabv3", "JMIR 2026 (on BUSI)", "DeepLabV3-ResNet101, weighted Dice",
        "jmir2026_deeplabv3", "not comparable (private HFUS data)"),
    Row("maskrcnn", "QIMS 2023 (on BUSI)", "Mask R-CNN ResNet101-FPN", "qims2023_maskrcnn",
        "not comparable (private data, masses < 1 cm)"),
)
# What the table shows per task: (group, metric) of evaluate's metrics.json.
SHOWN = {
    "segmentation": [("lesion", "dice"), ("lesion", "iou"), ("lesion", "precision"),
                     ("lesion", "recall"), ("all", "pixel_accuracy")],
    "classification": [("all", "accuracy"), ("all", "macro_f1"), ("all", "macro_auroc")],
    "detection": [("all", "ap50"), ("all", "map"), ("all", "auroc")],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--scale", choices=SCALES, default="budget")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--only", nargs="+", metavar="ROW", choices=[r.key for r in ROWS],
                        help="train these rows only (default: every row the scale runs)")
    parser.add_argument("--data", type=Path, default=BUSI)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for every row trained, after the scale's own "
                             "(e.g. --set train.epochs=30); recorded in result.json")
    parser.add_argument("--table", action="store_true", help="print the table of OUT only")
    args = parser.parse_args()
    if not args.table:
        device = _device(args.device)
        gpu_paths = args.device == "cuda"
        rows = [r for r in ROWS if (r.key in args.only if args.only else
                                    args.scale != "budget" or r.key in BUDGET)]
        split = _smoke_split(args.out, args.data) if args.scale == "smoke" else SPLIT
        failed = []
        for row in rows:
            try:
                _reproduce(row, args.scale, device, gpu_paths, args.data, split, args.out,
                           args.set)
            except SonocadError as exc:  # e.g. ImageNet weights not at hand: the rest go on
                print(f"reproduce_papers: {row.key} failed: {exc}", file=sys.stderr)
                failed.append(row.key)
    print(table(args.out))
    if not args.table and failed:
        sys.exit(f"reproduce_papers: {len(failed)} row(s) failed: {', '.join(failed)}")


def _device(asked: str) -> str:
    """The device training will use: "cuda" only where asked and found."""
    if asked == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the trainer takes a GPU wherever it sees one
        return "cpu"
    if not torch.cuda.is_available():
        print("no CUDA device here: the cuda code paths run on the CPU (AMP stays off)",
              file=sys.stderr)
        return "cpu"
    return "cuda"


def _smoke_split(out: Path, data: Path) -> Path:
    """A few images of each class from every subset of the frozen split (so still disjoint)."""
    frozen = read_split(SPLIT)
    subsets = {name: tuple(i for label in ("benign", "malignant", "normal")
                           for i in [i for i in ids if i.startswith(f"{label}/")][
                               :SMOKE_PER_CLASS[name]])
               for name, ids in frozen.subsets.items()}
    path = out / "smoke_split.json"
    out.mkdir(parents=True, exist_ok=True)
    write_split(path, SplitFile(frozen.dataset, frozen.seed,
                                f"the first of each class of each subset of {SPLIT.name}",
                                subsets))
    return path


def _reproduce(row: Row, scale: str, device: str, gpu_paths: bool, data: Path, split: Path,
               out: Path, extra: list[str]) -> None:
    overrides = [*{"smoke": SMOKE, "budget": BUDGET.get(row.key, []), "full": []}[scale], *extra]
    if gpu_paths:  # asked for CUDA: its settings, which fall back on a CPU
        overrides = [*overrides, *GPU]
    recipe = load_recipe(RECIPES / f"{row.recipe}.yaml", overrides)
    run = out / row.key
    print(f"== {row.paper}: {row.model} ({scale}, {device})", flush=True)
    trained = train(recipe, data, split, run / "run", overwrite=True)
    smoke = scale == "smoke"
    evaluation = evaluate(trained.best_checkpoint, data, f"{split}:test", run / "eval",
                          batch_size=2 if smoke else 8, n_boot=50 if smoke else 2000,
                          overlays=1 if smoke else 6, overwrite=True)
    summary = json.loads((run / "run" / "summary.json").read_text())
    metrics = evaluation.metrics
    shown = {f"{group}.{name}": metrics["groups"][group][name]
             for group, name in SHOWN[recipe.task]}
    n_images = {group: metrics["groups"][group]["n_images"]
                for group in {group for group, _ in SHOWN[recipe.task]}}
    result = {"paper": row.paper, "model": row.model, "recipe": row.recipe, "scale": scale,
              "device": device, "overrides": overrides, "machine": machine_line(),
              "minutes": summary["minutes"], "epochs": summary["epochs"],
              "steps": summary["steps"], "n_images": n_images, "metrics": shown}
    if recipe.task == "detection":
        result["combined"] = combine_on_synthetic(trained.best_checkpoint, data, split,
                                                  run / "combined", batch_size=2)
    write_json(run / "result.json", result)


def table(out: Path) -> str:
    """The reproduction table of every result.json under `out`, in ROWS order."""
    lines = ["| paper | model | scale | training | ours, BUSI test (95 % CI) | published |",
             "| --- | --- | --- | --- | --- | --- |"]
    combined = []
    for row in ROWS:
        path = out / row.key / "result.json"
        if not path.exists():
            continue
        result: dict[str, Any] = json.loads(path.read_text())
        figures = "; ".join(f"{name.split('.')[1]} {format_ci(stat)}"
                            for name, stat in result["metrics"].items())
        label = {"smoke": "smoke", "budget": "CPU-budget", "full": "GPU-full"}[result["scale"]]
        if result["scale"] == "full" and result["device"] == "cpu":
            label = "full (CPU)"
        n = ", ".join(f"n={count} {group}" for group, count in result["n_images"].items())
        lines.append(f"| {result['paper']} | {result['model']} | {label} | "
                     f"{_minutes(result['minutes'])}, {result['epochs']} epochs "
                     f"({_steps(result['steps'])}) | {figures} ({n}) | {row.published} |")
        if "combined" in result:
            combined.append(f"\nQIMS 2023 combined model on SYNTHETIC clinical factors "
                            f"({label} detector; the pipeline runs, not a result):\n"
                            f"{result['combined']}")
    return "\n".join(lines + combined)


def _steps(steps: int) -> str:
    return "1 step" if steps == 1 else f"{steps} steps"


def _minutes(minutes: float) -> str:
    return f"{minutes:.1f} min" if minutes < 10 or math.isnan(minutes) else f"{minutes:.0f} min"


if __name__ == "__main__":
    main()
