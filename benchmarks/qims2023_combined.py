"""The QIMS 2023 pipeline end to end on BUSI images with SYNTHETIC clinical factors.

Usage:
  python benchmarks/qims2023_combined.py --out runs/qims2023 [--steps 2] [--size 256]
  python benchmarks/qims2023_combined.py --out runs/qims2023 --checkpoint RUN/best.pt

1. trains recipes/qims2023_maskrcnn.yaml for ``--steps`` steps at ``--size`` px on the train
   subset of benchmarks/splits/busi.json (skipped with ``--checkpoint``);
2. evaluates the detector on the benign and malignant images of the train and test subsets
   (AP, AUROC, predictions tables; normal images take no part in the combined pipeline);
3. writes SYNTHETIC clinical factors for every benign and malignant BUSI image
   (`sonocad.data.clinical_synth`: BUSI has none; the distributions are assumptions);
4. runs `sonocad combine` (clinical MLP, logistic regression and decision tree on the lesions
   the image model called benign) and prints the QIMS Table 2 layout.

With SYNTHETIC clinical factors and a detector trained for a few CPU steps, the numbers show
that the pipeline runs, nothing about the method: never quote them as results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import machine_line
from sonocad.data.adapters import open_dataset
from sonocad.data.clinical_synth import SYNTHETIC, write_synthetic_clinical
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.engine.recipe import load_recipe
from sonocad.engine.trainer import train
from sonocad.evaluation.combined_runner import run_combined
from sonocad.evaluation.summary import format_summary
from sonocad.workflows.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
SPLIT = ROOT / "benchmarks" / "splits" / "busi.json"
RECIPE = ROOT / "recipes" / "qims2023_maskrcnn.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, help="score this detector; do not train")
    parser.add_argument("--steps", type=int, default=2, help="training steps (default 2)")
    parser.add_argument("--size", type=int, default=256,
                        help="input size for training (default 256; the paper used 1024)")
    parser.add_argument("--data", type=Path, default=BUSI)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    checkpoint = args.checkpoint
    if checkpoint is None:
        recipe = load_recipe(RECIPE, [f"train.max_steps={args.steps}", "data.cache=false",
                                      f"transform.input_size={args.size}"])
        checkpoint = train(recipe, args.data, SPLIT, args.out / "run",
                           overwrite=True).best_checkpoint
    print(combine_on_synthetic(checkpoint, args.data, SPLIT, args.out, seed=args.seed,
                               verbose=True))


def combine_on_synthetic(checkpoint: Path, data: Path, frozen_split: Path, out: Path, *,
                         seed: int = 0, batch_size: int = 2, verbose: bool = False) -> str:
    """Steps 2-4 for a trained detector; returns the QIMS Table 2 layout, titled."""
    lesions = [s for s in open_dataset(data) if s.label in ("benign", "malignant")]
    lesion_ids = {s.image_id for s in lesions}
    frozen = read_split(frozen_split)
    split = out / "lesion_split.json"
    out.mkdir(parents=True, exist_ok=True)
    subsets = {name: tuple(i for i in ids if i in lesion_ids)
               for name, ids in frozen.subsets.items()}
    write_split(split, SplitFile(frozen.dataset, frozen.seed,
                                 f"benign and malignant images of {frozen_split.name}", subsets))
    tables = {}
    for subset in ("train", "test"):
        result = evaluate(checkpoint, data, f"{split}:{subset}", out / f"eval_{subset}",
                          batch_size=batch_size, overwrite=True)
        if verbose:
            print(format_summary(result.metrics))
        tables[subset] = result.out_dir / "predictions.csv"
    clinical = write_synthetic_clinical(out / f"clinical_{SYNTHETIC}.csv",
                                        [s.image_id for s in lesions],
                                        [s.label for s in lesions], seed=seed)
    combined = run_combined(tables["train"], tables["test"], clinical, out / "combined",
                            seed=seed, overwrite=True)
    return (f"QIMS 2023 pipeline on BUSI, clinical factors {SYNTHETIC} — {machine_line()}\n"
            f"{combined.table}")


if __name__ == "__main__":
    main()
