"""How `sonocad data check` and `data split` scale with the number of images: time and peak
memory on 2,000, 5,000 and 20,000 generated tiny images.

Usage: python benchmarks/data_scaling.py [--sizes 2000,5000,20000] [--keep DIR]

The images are made at run time in a temporary folder (or `--keep DIR`): 32 x 32 grey PNGs of
random noise, so that no two are duplicates but the perceptual-hash prefilter still passes a few
random pairs (about 1 in 4,000), whose number grows with the square of the image count. Every
command runs in a child process of its own; its peak resident set size is the kernel's count for
that child (os.wait4), its CPU seconds (user + system) are less disturbed than wall-clock seconds
by other work on a shared machine. Prints one markdown table.

This process stays small (numpy and Pillow only; torch, for the machine line, is imported in a
child of its own): Linux counts a child's peak from the memory of the process that started it,
so a parent that had imported torch would lift every child's figure to its own size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

CLI_CODE = "import sys; from sonocad.cli import main; sys.exit(main(sys.argv[1:]))"
SIDE = 32


def noise_images(folder: Path, count: int) -> Path:
    """A `folder` layout dataset of `count` random-noise PNGs (no labels, no masks)."""
    images = folder / f"noise_{count}" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(count)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(SIDE, SIDE), dtype=np.uint8)
        PILImage.fromarray(pixels).save(images / f"{index:06d}.png")
    return images.parent


def run(command: list[str], log: Path) -> tuple[int, float, float, float]:
    """(exit code, wall seconds, CPU seconds, peak RSS MiB) of one `sonocad` command."""
    start = time.perf_counter()
    with open(log, "wb") as output:
        child = subprocess.Popen([sys.executable, "-c", CLI_CODE, *command], stdout=output,
                                 stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)  # already reaped: tell Popen
    return (child.returncode, time.perf_counter() - start, usage.ru_utime + usage.ru_stime,
            usage.ru_maxrss / 1024)  # Linux reports KiB


def machine_line() -> str:
    """`_common.machine_line()`, from a child: it imports torch."""
    code = "from _common import machine_line; print(machine_line())"
    return subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, text=True,
                          capture_output=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,5000,20000",
                        help="image counts, comma-separated (default 2000,5000,20000)")
    parser.add_argument("--keep", type=Path, help="make the images here, and keep them")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    folder = args.keep or Path(tempfile.mkdtemp(prefix="sonocad-data-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        print(machine_line())
        print(f"{SIDE} x {SIDE} random-noise PNGs; CPU seconds are user + system of the child\n")
        print("| images | command | wall s | CPU s | CPU ms per image | peak RSS | exit |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for count in sizes:
            dataset = noise_images(folder, count)
            for name, command in (
                    ("data check", ["data", "check", str(dataset)]),
                    ("data split", ["data", "split", str(dataset), "--out",
                                    str(folder / f"split_{count}.json")])):
                code, wall, cpu, peak = run(command, folder / f"{name.replace(' ', '_')}_"
                                                               f"{count}.log")
                print(f"| {count:,} | `{name}` | {wall:.0f} | {cpu:.0f} | "
                      f"{1000 * cpu / count:.1f} | {peak:,.0f} MiB | {code} |", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
