"""Progress for every long loop: a bar on a terminal; elsewhere (CI, pipes, log files) one
line every `LOG_EVERY_S` seconds with count, rate and time left, so a log shows a job alive."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
LOG_EVERY_S = 30.0


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Wrap `items` in a bar on stderr, or in periodic log lines when it is not a terminal."""
    if sys.stderr.isatty():
        return iter(tqdm(items, desc=description, total=total, leave=False,
                         dynamic_ncols=True))
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    return _logged(items, description, total)


def _logged(items: Iterable[T], description: str, total: int | None) -> Iterator[T]:
    log = RateLog(description, total)
    for count, item in enumerate(items, start=1):
        yield item
        log.update(count)


class RateLog:
    """`update(done)` prints "<what> 40/100, 12.3/s, about 5 s left" at most every
    `every_s` seconds (and on the first call when `first` is set). `start`: what was done
    before this process began (a resumed run), so the time left is paced on this process's
    work alone."""

    def __init__(self, what: str, total: int | None, *, unit: str = "",
                 every_s: float = LOG_EVERY_S, first: bool = False, start: int = 0) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.start = start
        self.started = time.monotonic()
        self._next = self.started if first else self.started + every_s

    def update(self, done: int, rate_items: int | None = None, extra: str = "") -> None:
        """`rate_items`: what the rate counts (images, say) when it is not `done`."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        elapsed = max(now - self.started, 1e-9)
        rate = (rate_items if rate_items is not None else done) / elapsed
        line = f"sonocad: {self.what} {done}" + (f"/{self.total}" if self.total else "")
        line += f", {rate:.1f}{self.unit}/s"
        if self.total and done > self.start:
            pace = elapsed / (done - self.start)
            line += f", about {_duration(pace * (self.total - done))} left"
        print(line + (f", {extra}" if extra else ""), file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
