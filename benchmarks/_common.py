"""Shared by the benchmark scripts: the machine line every table carries, and timing."""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable

import torch


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
