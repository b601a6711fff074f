"""How many labelled images does a new scanner need? The learning curve of fine-tuning.

A model trained without the Toshiba scanner (BUSI + BUS-BRA's other three scanners,
benchmarks/splits/busbra_without_toshiba.json) is fine-tuned with recipes/finetune.yaml on
0, 10, 25, 50 and 100 labelled Toshiba images (whole patients; a fifth of the patients for
validation, where the decision rule is refitted) and scored on the Toshiba patients kept for
test, the same for every point. Replay draws BUSI and the non-Toshiba BUS-BRA training images.
Beside it: the forgetting check (BUSI test and the non-Toshiba BUS-BRA test, before and after
the largest point), and the in-domain figure the gap is measured to (the base model on the
non-Toshiba BUS-BRA test). Each figure has a 95 % bootstrap CI over patients; wall time per
point is on this machine.

Usage:
  python benchmarks/adaptation.py --out runs/adaptation               # trains the base (~35 min)
  (the base alone: sonocad train recipes/default.yaml --out runs/adaptation/base "BASE_SOURCES"
   train.epochs=10, which also fits its decision rule)
  python benchmarks/adaptation.py --out runs/adaptation --base RUN/best.pt --sizes 0,10,25
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from _common import machine_line
from sonocad.data.sources import Source
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.evaluation.summary import format_ci
from sonocad.workflows.decision_fit import fit_run_decision
from sonocad.workflows.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
BUSI = (DATASETS / "busi" / "Dataset_BUSI_with_GT", ROOT / "benchmarks" / "splits" / "busi.json")
BUSBRA = DATASETS / "busbra" / "BUSBRA"
WITHOUT_TOSHIBA = ROOT / "benchmarks" / "splits" / "busbra_without_toshiba.json"
TEST_IMAGES = 39  # Toshiba images kept for test: 139 held out, 100 for the largest point
SEED = 20261206
# The default recipe's sources, BUS-BRA without its Toshiba images (their patients held out).
BASE_SOURCES = ("data.sources=[{name: busi, path: '%s', split: '%s'}, {name: busbra, path: '%s', "
                "split: '%s', weight: 0.8}]" % (*BUSI, BUSBRA, WITHOUT_TOSHIBA))
# Half the default schedule, so that the whole curve fits in one session on two cores.
BASE_EPOCHS = "train.epochs=10"
# The base is one EfficientNet-Lite0 U-Net (the fine-tuning recipe's own model is the bundled
# ensemble).
SINGLE = ["model.name=efficientnet_lite0_unet", "model.args={dropout: 0.2}"]
FIGURES = (("lesion_iou", "lesion IoU"), ("benign_vs_malignant_auroc", "AUROC b-vs-m"),
           ("final_lesion_called_normal", "lesions called normal"),
           ("low_confidence", "flagged"))


def toshiba_patients() -> tuple[list[list[str]], list[list[str]]]:
    """(test patients, labelled pool in draw order), each patient its image ids."""
    held_out = set(read_split(WITHOUT_TOSHIBA).subsets["held_out"])
    by_patient: dict[str, list[str]] = defaultdict(list)
    for sample in Source("busbra", BUSBRA, WITHOUT_TOSHIBA).open():
        if sample.image_id in held_out:
            by_patient[sample.patient_id or sample.image_id].append(sample.image_id)
    patients = [sorted(ids) for _, ids in sorted(by_patient.items())]
    random.Random(SEED).shuffle(patients)
    test, pool = [], list(patients)
    while sum(map(len, test)) < TEST_IMAGES:
        test.append(pool.pop())
    return test, pool


def point_split(test: list[list[str]], pool: list[list[str]], size: int, path: Path) -> int:
    """Write the split of one point: whole patients from the pool until `size` images (a fifth
    of them for validation, at least one), the fixed test patients. Returns the images used."""
    chosen, count = [], 0
    for patient in pool:
        if count >= size:
            break
        chosen.append(patient)
        count += len(patient)
    n_val = max(1, round(len(chosen) / 5))
    subsets = {"train": tuple(sorted(i for p in chosen[n_val:] for i in p)),
               "val": tuple(sorted(i for p in chosen[:n_val] for i in p)),
               "test": tuple(sorted(i for p in test for i in p))}
    write_split(path, SplitFile("BUSBRA", SEED, f"{size} Toshiba images by patient", subsets))
    return count


def scored(checkpoint: Path, data: Path, split: str, out: Path) -> dict[str, Any]:
    """The pooled figures of `checkpoint` on one subset (final calls where it has a rule)."""
    result = evaluate(checkpoint, [data], [split], out, overwrite=True, by=["source"],
                      overlays=0)
    return result.metrics["breakdowns"]["source"]["groups"]["pooled"]


def row(label: str, figures: dict[str, Any], minutes: float | None) -> str:
    cells = [format_ci(figures[key]) if key in figures else "—" for key, _ in FIGURES]
    return (f"| {label} | " + " | ".join(cells) + " | "
            + ("—" if minutes is None else f"{minutes:.1f}") + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "adaptation")
    parser.add_argument("--base", type=Path, help="a model trained without Toshiba")
    parser.add_argument("--sizes", default="0,10,25,50,100")
    args = parser.parse_args()
    out = args.out.resolve()
    os.chdir(ROOT)  # the recipes' data paths are relative to the project root
    base = args.base
    if base is None:
        started = time.monotonic()
        recipe = load_recipe(ROOT / "recipes" / "default.yaml", [BASE_SOURCES, BASE_EPOCHS])
        run = train(recipe, None, None, out / "base", overwrite=True)
        fit_run_decision(run.best_checkpoint, recipe)
        base = run.best_checkpoint
        print(f"base model trained without Toshiba in {(time.monotonic() - started) / 60:.0f} "
              "min")
    test, pool = toshiba_patients()
    heading = " | ".join(name for _, name in FIGURES)
    lines = [f"| labelled Toshiba images | {heading} | minutes |",
             "| --- |" + " --- |" * (len(FIGURES) + 1)]
    largest = None
    for size in (int(s) for s in args.sizes.split(",")):
        split = out / f"toshiba_{size}.json"
        used = point_split(test, pool, size, split)
        started = time.monotonic()
        checkpoint = base
        if size:
            recipe = load_recipe(ROOT / "recipes" / "finetune.yaml", [
                *SINGLE, f"model.init={base}",
                "data.replay=[{name: busi, path: '%s', split: '%s', weight: 0.15}, "
                "{name: others, path: '%s', split: '%s', weight: 0.1}]"
                % (BUSI[0], BUSI[1], BUSBRA, WITHOUT_TOSHIBA)])
            run = train(recipe, [BUSBRA], [split], out / f"tuned_{size}", overwrite=True)
            fit_run_decision(run.best_checkpoint, recipe, [BUSBRA], [split])
            checkpoint, largest = run.best_checkpoint, run.best_checkpoint
        minutes = (time.monotonic() - started) / 60 if size else None
        figures = scored(checkpoint, BUSBRA, f"{split}:test", out / f"eval_{size}")
        lines.append(row(f"{used} ({size} asked)", figures, minutes))
    in_domain = scored(base, BUSBRA, f"{WITHOUT_TOSHIBA}:test", out / "eval_in_domain")
    lines.append(row("in-domain: base model on the other scanners' BUS-BRA test", in_domain,
                     None))
    if largest is not None:
        for name, (data, split) in {"BUSI": BUSI, "BUS-BRA without Toshiba":
                                    (BUSBRA, WITHOUT_TOSHIBA)}.items():
            for label, model in (("before", base), ("after", largest)):
                figures = scored(model, data, f"{split}:test", out / f"forget_{label}_{name}")
                lines.append(row(f"forgetting: {name} test, {label} fine-tuning", figures,
                                 None))
    print(f"Adapting to a held-out scanner (Toshiba) — {machine_line()}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
