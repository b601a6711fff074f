"""Progress for every long loop: a bar on a terminal; elsewhere (CI, pipes, log files) one
line once a loop has run `FIRST_LOG_S` seconds, then every `LOG_EVERY_S` seconds, with count,
unit, rate and time left, so a log shows a job alive and no wait is silent. Every line reads
"sonocad: <what> 40/100, 12.3 images/s, about 5 s left"."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_EVERY_S = 30.0
FIRST_LOG_S = 2.0  # a shorter loop prints nothing; a longer one says so early


def progress(items: Iterable[T], description: str, total: int | None = None, *,
             unit: str = "items", size: Callable[[T], int] | None = None) -> Iterator[T]:
    """Wrap `items` in a bar on stderr, or in periodic log lines when it is not a terminal.

    `unit` names what is counted (images, files, folds); `size` says how many of them an
    item holds (the images of a batch) when it is not one, and `total` then counts units."""
    if total is None and size is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    count = size or _one
    if sys.stderr.isatty():
        return _bar(items, description, total, unit, count)
    return _logged(items, description, total, unit, count)


def _one(_: object) -> int:
    return 1


def _bar(items: Iterable[T], description: str, total: int | None, unit: str,
         size: Callable[[T], int]) -> Iterator[T]:
    with tqdm(desc=description, total=total, unit=f" {unit}", leave=False,
              dynamic_ncols=True) as bar:
        for item in items:
            yield item
            bar.update(size(item))


def _logged(items: Iterable[T], description: str, total: int | None, unit: str,
            size: Callable[[T], int]) -> Iterator[T]:
    log = RateLog(description, total, unit=f" {unit}", every_s=LOG_EVERY_S,
                  first_after_s=FIRST_LOG_S)
    done = 0
    for item in items:
        yield item
        done += size(item)
        log.update(done)


@contextlib.contextmanager
def waiting(description: str) -> Iterator[None]:
    """For one long call with nothing to count (an export, a fit): "sonocad: <description>,
    3 s so far" on stderr once it has taken `FIRST_LOG_S`, then every `LOG_EVERY_S`; a call
    that ends sooner prints nothing."""
    started, finished = time.monotonic(), threading.Event()

    def report(wait: float) -> None:
        while not finished.wait(wait):
            print(f"sonocad: {description}, {duration(time.monotonic() - started)} so far",
                  file=sys.stderr, flush=True)
            wait = LOG_EVERY_S

    reporter = threading.Thread(target=report, args=(FIRST_LOG_S,), daemon=True)
    reporter.start()
    try:
        yield
    finally:
        finished.set()
        reporter.join()


class RateLog:
    """`update(done)` prints "<what> 40/100, 12.3/s, about 5 s left" at most every
    `every_s` seconds (default: `LOG_EVERY_S`), the first time after `first_after_s`
    (default: `every_s`; on the first call when `first` is set). `start`: what was done before
    this process began (a resumed run), so the time left is paced on this process's work
    alone; `exclude` leaves out the time of other work (a training run's validations), which
    the time left adds apart."""

    def __init__(self, what: str, total: int | None, *, unit: str = "",
                 every_s: float | None = None, first: bool = False,
                 first_after_s: float | None = None, start: int = 0) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.every_s = LOG_EVERY_S if every_s is None else every_s  # as set now, not at import
        self.start = start
        self.started = time.monotonic()
        wait = 0.0 if first else self.every_s if first_after_s is None else first_after_s
        self._next = self.started + wait

    def exclude(self, seconds: float) -> None:
        """Leave `seconds` spent on other work out of the rate and the pace."""
        self.started += seconds

    def left_s(self, done: int, also_s: float = 0.0) -> float | None:
        """Seconds left at this process's pace, plus `also_s` of other work still to come."""
        return time_left(time.monotonic() - self.started, done, self.total, start=self.start,
                         also_s=also_s)

    def update(self, done: int, rate_items: int | None = None, extra: str = "", *,
               also_left_s: float = 0.0) -> None:
        """`rate_items`: what the rate counts (images, say) when it is not `done`;
        `also_left_s`: seconds of other work still to come, which the time left includes."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        elapsed = max(now - self.started, 1e-9)
        rate = (rate_items if rate_items is not None else done) / elapsed
        line = f"sonocad: {self.what} {done}" + (f"/{self.total}" if self.total else "")
        line += f", {rate:.1f}{self.unit}/s"
        left = time_left(elapsed, done, self.total, start=self.start, also_s=also_left_s)
        if left is not None:
            line += f", about {duration(left)} left"
        print(line + (f", {extra}" if extra else ""), file=sys.stderr, flush=True)


def time_left(elapsed_s: float, done: int, total: int | None, *, start: int = 0,
              also_s: float = 0.0) -> float | None:
    """The seconds the rest of `total` takes at the pace of the `done - start` done in
    `elapsed_s`, plus `also_s` of other work still to come; None without a total or a pace."""
    if not total or done <= start:
        return None
    return elapsed_s / (done - start) * (total - done) + also_s


def duration(seconds: float) -> str:
    """`seconds` as a log line says it: "12 s", "5 min", "1.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
