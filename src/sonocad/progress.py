"""One progress bar for every long loop: on a terminal it shows count, rate and ETA."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Wrap `items` in a bar on stderr; silent when stderr is not a terminal (CI, pipes)."""
    return iter(tqdm(items, desc=description, total=total, leave=False,
                     disable=not sys.stderr.isatty(), dynamic_ncols=True))
