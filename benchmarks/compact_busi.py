"""A compact copy of BUSI for a short GPU session: every image and mask at most 384 px long.

Usage: python benchmarks/compact_busi.py [--out runs/busi-compact] [--side 384]

The copy keeps BUSI's layout and file names, so benchmarks/splits/busi.json selects the same
images from it (its fingerprint is of the originals: the split file is read by image id).
Images are resized with Pillow's area-averaging filter, masks with nearest neighbour (they stay
0/255). At 384 px the copy is about 47 MiB (PNG): small enough to carry to a lent GPU machine
(`run` carries at most 64 MiB), where reproduce_papers.py trains on it with --data. It is
written under runs/ (git-ignored) and never committed: BUSI's licence travels with the data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BUSI = ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"


def compact(source: Path, out: Path, side: int) -> int:
    """Write the copy; return its size in bytes."""
    total = 0
    for path in sorted(source.rglob("*.png")):
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(path) as image:
            scale = side / max(image.size)
            if scale < 1:
                size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
                mask = "_mask" in path.stem
                image = image.resize(size, Image.Resampling.NEAREST if mask
                                     else Image.Resampling.BOX)
            image.save(target, optimize=True)
        total += target.stat().st_size
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "busi-compact")
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--data", type=Path, default=BUSI)
    args = parser.parse_args()
    size = compact(args.data, args.out, args.side)
    print(f"wrote {args.out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
