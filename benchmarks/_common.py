"""Shared by the benchmark scripts: the machine line every table carries, timing, and the two
public data sets with their frozen splits."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sonocad.data.sample import Sample
from sonocad.data.sources import Source
from sonocad.data.split import read_split, select

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
# name -> (data folder, frozen split)
SOURCES = {"BUSI": (DATASETS / "busi" / "Dataset_BUSI_with_GT",
                    ROOT / "benchmarks" / "splits" / "busi.json"),
           "BUS-BRA": (DATASETS / "busbra" / "BUSBRA",
                       ROOT / "benchmarks" / "splits" / "busbra.json")}


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{datetime.date.today().isoformat()}, {cpu}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def best_seconds(fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1) -> float:
    """The fastest of `repeats` runs: the least disturbed by other load on a noisy machine."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def subset_samples(name: str, subset: str) -> list[Sample]:
    """The samples of `subset` ("train", "val", "test") of the data set `name` (`SOURCES`)."""
    data, split = SOURCES[name]
    return select(Source(split.stem, data, split).open(), read_split(split).subsets[subset])
