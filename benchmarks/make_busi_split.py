"""Regenerate the frozen BUSI split, benchmarks/splits/busi.json.

About 70/15/15 train/val/test of all 780 images, stratified by class, seed 0; exact and near
duplicates (`sonocad.data.duplicates`) stay in one subset. The file is committed so that test
numbers stay comparable: regenerate it only when the duplicate detector changes, and say so.

    python benchmarks/make_busi_split.py [BUSI_DIR] [--out PATH]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from sonocad.data.adapters import open_dataset
from sonocad.data.duplicates import find_duplicate_groups
from sonocad.data.split import make_split, write_split

HERE = Path(__file__).resolve().parent
DEFAULT_BUSI = HERE.parents[1] / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("busi", nargs="?", type=Path, default=DEFAULT_BUSI)
    parser.add_argument("--out", type=Path, default=HERE / "splits" / "busi.json")
    args = parser.parse_args()

    samples = open_dataset(args.busi, layout="busi")
    groups = find_duplicate_groups(samples)
    split = make_split(samples, [g.image_ids for g in groups], fractions=(0.70, 0.15, 0.15),
                       seed=0, dataset="BUSI")
    write_split(args.out, split)

    label = {s.image_id: s.label for s in samples}
    print(f"{len(samples)} images, {len(groups)} duplicate groups "
          f"({sum(len(g.image_ids) for g in groups)} images)")
    for name, ids in split.subsets.items():
        counts = Counter(label[i] for i in ids)
        classes = "  ".join(f"{c} {n}" for c, n in sorted(counts.items()))
        print(f"{name:>5}: {len(ids):3d}  {classes}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
