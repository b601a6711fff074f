"""How long the data tools take: a phantom, and duplicate finding over BUSI (780 images).

Usage: python benchmarks/data_speed.py
Was two wall-clock assertions in the unit tests (50 ms and 60 s), which failed on a busy
machine; a benchmark prints the figures instead, for docs/benchmarks.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import best_seconds, machine_line
from sonocad.data.adapters import open_dataset
from sonocad.data.duplicates import find_duplicate_groups
from sonocad.data.phantom import make_phantom

BUSI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"


def main() -> None:
    print(f"Data tools — {machine_line()}\n")
    print("| task | seconds |")
    print("| --- | ---: |")
    seeds = iter(range(10**6))
    phantom = best_seconds(lambda: make_phantom("malignant", seed=next(seeds), calipers=True,
                                                text=True), repeats=5)
    print(f"| one 256 x 256 phantom with calipers and text (best of 5) | {phantom:.4f} |")
    if BUSI.is_dir():
        samples = open_dataset(BUSI)
        start = time.perf_counter()
        groups = find_duplicate_groups(samples)
        print(f"| duplicate groups of BUSI's {len(samples)} images ({len(groups)} found) | "
              f"{time.perf_counter() - start:.1f} |")


if __name__ == "__main__":
    main()
