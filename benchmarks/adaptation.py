"""How many labelled images does a new scanner need? The learning curve of fine-tuning.

Two directions, each a base model trained without the target, fine-tuned with
recipes/finetune.yaml on 0, 10, 25, 50 and 100 labelled target images (whole patients; a fifth
of the patients for validation, where the decision rule is refitted) and scored on target
patients kept for test, the same for every point:

- ``toshiba``: base = BUSI + BUS-BRA's other three scanners
  (benchmarks/splits/busbra_without_toshiba.json), target = BUS-BRA's Toshiba Aplio 300
  patients (40 test images: whole patients until at least 39). Replay: BUSI and the other
  BUS-BRA scanners. ``--ceiling`` also trains the base recipe with the largest point's Toshiba
  images from the start and scores it on the same test patients: the figure fine-tuning could
  reach.
- ``busi-to-busbra``: base = BUSI alone (one scanner, Cairo), target = BUS-BRA (four scanners,
  Brazil; its frozen test subset). Replay: BUSI.

Beside each curve: the in-domain figure the gap is measured to (the base on its own sources'
test) and the forgetting check (those tests before and after the largest point). Each figure
has a 95 % bootstrap CI over patients; wall time per point is on this machine.

Usage:
  python benchmarks/adaptation.py --out runs/adaptation                  # trains the base too
  python benchmarks/adaptation.py --out runs/adaptation --base RUN/best.pt --sizes 0,10,25
  python benchmarks/adaptation.py --direction busi-to-busbra --out runs/adaptation_busi
  python benchmarks/adaptation.py --out runs/adaptation --base RUN/best.pt --ceiling --sizes ""
  python benchmarks/adaptation.py --out runs/adaptation --base RUN/best.pt --refit  # rule only
  python benchmarks/adaptation.py --out runs/adaptation --base RUN/best.pt --sizes 100 \
      --without-replay                                       # the forgetting replay prevents
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import SOURCES, machine_line
from sonocad.data.sources import Source
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.evaluation.summary import format_ci
from sonocad.workflows.decision_fit import fit_run_decision
from sonocad.workflows.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
BUSI, BUSI_SPLIT = SOURCES["BUSI"]
BUSBRA, BUSBRA_SPLIT = SOURCES["BUS-BRA"]
WITHOUT_TOSHIBA = ROOT / "benchmarks" / "splits" / "busbra_without_toshiba.json"
SEED = 20261206
# The base is one EfficientNet-Lite0 U-Net (the fine-tuning recipe's own model is the bundled
# ensemble).
SINGLE = ["model.name=efficientnet_lite0_unet", "model.args={dropout: 0.2}"]
FIGURES = (("lesion_iou", "lesion IoU"), ("benign_vs_malignant_auroc", "AUROC b-vs-m"),
           ("final_lesion_called_normal", "lesions called normal"),
           ("low_confidence", "flagged"))


def _source(name: str, path: Path, split: Path, weight: float = 1.0) -> str:
    return f"{{name: {name}, path: '{path}', split: '{split}', weight: {weight}}}"


@dataclass(frozen=True)
class Direction:
    target: str  # the new scanner(s), as the table names them
    base_sources: tuple[str, ...]  # recipe source entries the base trains on
    base_epochs: int
    replay: tuple[str, ...]
    target_split: Path  # the split whose `pool_subsets` / `test_subset` hold the target
    pool_subsets: tuple[str, ...]
    test_subset: str
    test_images: int | None  # None: the whole test subset
    in_domain: tuple[tuple[str, Path, Path], ...]  # (name, data, split) the base was tested on


DIRECTIONS = {
    # Half the default schedule, so that the whole curve fits in one session on two cores.
    "toshiba": Direction(
        "Toshiba", (_source("busi", BUSI, BUSI_SPLIT),
                    _source("busbra", BUSBRA, WITHOUT_TOSHIBA, 0.8)), 10,
        (_source("busi", BUSI, BUSI_SPLIT, 0.15), _source("others", BUSBRA, WITHOUT_TOSHIBA, 0.1)),
        WITHOUT_TOSHIBA, ("held_out",), "held_out", 39,
        (("BUSI", BUSI, BUSI_SPLIT), ("BUS-BRA without Toshiba", BUSBRA, WITHOUT_TOSHIBA))),
    # Half the default schedule too (BUSI alone: ~600 draws an epoch, 15 minutes in all).
    "busi-to-busbra": Direction(
        "BUS-BRA", (_source("busi", BUSI, BUSI_SPLIT),), 10,
        (_source("busi", BUSI, BUSI_SPLIT, 0.15),), BUSBRA_SPLIT, ("train", "val"), "test", None,
        (("BUSI", BUSI, BUSI_SPLIT),)),
}


def target_patients(direction: Direction) -> tuple[list[list[str]], list[list[str]]]:
    """(test patients, labelled pool in draw order), each patient its image ids."""
    subsets = read_split(direction.target_split).subsets
    wanted = {i for name in {*direction.pool_subsets, direction.test_subset} for i in subsets[name]}
    by_patient: dict[str, list[str]] = defaultdict(list)
    for sample in Source("busbra", BUSBRA, direction.target_split).open():
        if sample.image_id in wanted:
            by_patient[sample.patient_id or sample.image_id].append(sample.image_id)
    patients = [sorted(ids) for _, ids in sorted(by_patient.items())]
    random.Random(SEED).shuffle(patients)
    if direction.test_images is None:  # the frozen test subset
        test_ids = set(subsets[direction.test_subset])
        return ([p for p in patients if p[0] in test_ids],
                [p for p in patients if p[0] not in test_ids])
    test, pool = [], list(patients)
    while sum(map(len, test)) < direction.test_images:
        test.append(pool.pop())
    return test, pool


def chosen_patients(pool: list[list[str]], size: int) -> list[list[str]]:
    """Whole patients from the pool, in draw order, until `size` images."""
    chosen, count = [], 0
    for patient in pool:
        if count >= size:
            break
        chosen.append(patient)
        count += len(patient)
    return chosen


def point_split(test: list[list[str]], chosen: list[list[str]], path: Path,
                extra: dict[str, tuple[str, ...]] | None = None) -> int:
    """Write the split of one point: the chosen patients (a fifth of them for validation, at
    least one) and the fixed test patients, each subset joined with `extra`'s. Returns the
    labelled images used."""
    n_val = max(1, round(len(chosen) / 5))
    extra = extra or {}
    subsets = {"train": [i for p in chosen[n_val:] for i in p],
               "val": [i for p in chosen[:n_val] for i in p],
               "test": [i for p in test for i in p]}
    subsets = {name: tuple(sorted([*ids, *extra.get(name, ())])) for name, ids in subsets.items()}
    write_split(path, SplitFile("BUSBRA", SEED, f"{sum(map(len, chosen))} target images by "
                                "patient", subsets))
    return sum(map(len, chosen))


def scored(checkpoint: Path, data: Path, split: str, out: Path) -> dict[str, Any]:
    """The pooled figures of `checkpoint` on one subset (final calls where it has a rule)."""
    result = evaluate(checkpoint, [data], [split], out, overwrite=True, by=["source"],
                      overlays=0)
    return result.metrics["breakdowns"]["source"]["groups"]["pooled"]


def row(label: str, figures: dict[str, Any], minutes: float | None) -> str:
    cells = [format_ci(figures[key]) if key in figures else "—" for key, _ in FIGURES]
    return (f"| {label} | " + " | ".join(cells) + " | "
            + ("—" if minutes is None else f"{minutes:.1f}") + " |")


def train_base(direction: Direction, out: Path, sources: tuple[str, ...] | None = None) -> Path:
    """Train the default recipe as one model on `sources` (the direction's base sources) and
    fit its decision rule; returns its best checkpoint."""
    started = time.monotonic()
    recipe = load_recipe(ROOT / "recipes" / "default.yaml", [
        "data.sources=[%s]" % ", ".join(sources or direction.base_sources),
        f"train.epochs={direction.base_epochs}"])
    run = train(recipe, None, None, out, overwrite=True)
    fit_run_decision(run.best_checkpoint, recipe)
    print(f"{out.name} trained in {(time.monotonic() - started) / 60:.0f} min")
    return run.best_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--direction", choices=sorted(DIRECTIONS), default="toshiba")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "adaptation")
    parser.add_argument("--base", type=Path, help="a model trained without the target")
    parser.add_argument("--sizes", default="0,10,25,50,100")
    parser.add_argument("--ceiling", action="store_true",
                        help="also train the base recipe with the largest point's target images "
                             "from the start (toshiba only)")
    parser.add_argument("--refit", action="store_true",
                        help="refit the decision rule of the points' existing checkpoints "
                             "(OUT/tuned_N) instead of fine-tuning again")
    parser.add_argument("--without-replay", action="store_true",
                        help="fine-tune without replaying the base's sources (OUT/tuned_N_"
                             "without_replay): what replay saves from forgetting")
    args = parser.parse_args()
    direction = DIRECTIONS[args.direction]
    suffix = "_without_replay" if args.without_replay else ""
    out = args.out.resolve()
    os.chdir(ROOT)  # the recipes' data paths are relative to the project root
    base = args.base or train_base(direction, out / "base")
    test, pool = target_patients(direction)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    heading = " | ".join(name for _, name in FIGURES)
    lines = [f"| labelled {direction.target} images | {heading} | minutes |",
             "| --- |" + " --- |" * (len(FIGURES) + 1)]
    largest = None
    for size in sizes:
        split = out / f"target_{size}.json"
        used = point_split(test, chosen_patients(pool, size), split)
        started = time.monotonic()
        checkpoint = base
        if size:
            replay = "null" if args.without_replay else "[%s]" % ", ".join(direction.replay)
            recipe = load_recipe(ROOT / "recipes" / "finetune.yaml", [
                *SINGLE, f"model.init={base}", f"data.replay={replay}"])
            tuned = out / f"tuned_{size}{suffix}"
            checkpoint = (tuned / "best.pt" if args.refit else
                          train(recipe, [BUSBRA], [split], tuned, overwrite=True).best_checkpoint)
            fit_run_decision(checkpoint, recipe, [BUSBRA], [split])
            largest = checkpoint
        minutes = (time.monotonic() - started) / 60 if size and not args.refit else None
        figures = scored(checkpoint, BUSBRA, f"{split}:test", out / f"eval_{size}{suffix}")
        lines.append(row(f"{used} ({size} asked){suffix.replace('_', ' ')}", figures, minutes))
    if args.ceiling:
        # The other scanners' subsets plus the largest point's target patients, from the start.
        split = out / "ceiling.json"
        others = {name: ids for name, ids in read_split(WITHOUT_TOSHIBA).subsets.items()
                  if name in ("train", "val")}
        used = point_split(test, chosen_patients(pool, max(sizes, default=100)), split, others)
        sources = (direction.base_sources[0], _source("busbra", BUSBRA, split, 0.8))
        started = time.monotonic()
        ceiling = train_base(direction, out / "ceiling", sources)
        figures = scored(ceiling, BUSBRA, f"{split}:test", out / "eval_ceiling")
        lines.append(row(f"ceiling: {used} {direction.target} images from the start", figures,
                         (time.monotonic() - started) / 60))
    for name, data, split in direction.in_domain:
        figures = scored(base, data, f"{split}:test", out / f"in_domain_{name}")
        lines.append(row(f"in-domain: base model on {name} test", figures, None))
        if largest is not None:
            figures = scored(largest, data, f"{split}:test", out / f"forget_{name}{suffix}")
            lines.append(row(f"forgetting: {name} test after the largest point"
                             f"{suffix.replace('_', ' ')}", figures, None))
    print(f"Adapting to a held-out scanner ({direction.target}) — {machine_line()}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
