"""The last few results' images, in memory: bounded in count and bytes, least recently used
evicted first, so the server's memory stays flat however many images it sees. The byte budget
holds for every result, the newest too: one over it on its own is refused (the app keeps an
upload's frames within it before adding them).

Ids are random (`secrets.token_urlsafe`), so one user cannot guess another's results, and are
only ever dictionary keys: nothing is read from disk by a name a client sends.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict

ID_BYTES = 16
ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"  # what token_urlsafe(16) returns
MAX_RESULTS = 64
MAX_BYTES = 256 * 2**20


class ResultStore:
    """`add` a result's named images (e.g. "overlay" -> PNG bytes); `get` them back by id."""

    def __init__(self, max_results: int = MAX_RESULTS, max_bytes: int = MAX_BYTES) -> None:
        self.max_results, self.max_bytes = max_results, max_bytes
        self._results: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # requests run in a thread pool

    def add(self, images: dict[str, bytes]) -> str:
        """Its id; older results are evicted to make room. A `ValueError` for a result over
        `max_bytes` on its own."""
        size = _size(images)
        if size > self.max_bytes:
            raise ValueError(f"a result of {size} bytes is over the store's {self.max_bytes}")
        result_id = secrets.token_urlsafe(ID_BYTES)
        with self._lock:
            self._results[result_id] = images
            self._bytes += size
            while len(self._results) > self.max_results or self._bytes > self.max_bytes:
                _, evicted = self._results.popitem(last=False)
                self._bytes -= _size(evicted)
        return result_id

    def get(self, result_id: str, name: str) -> bytes | None:
        with self._lock:
            images = self._results.get(result_id)
            if images is None:
                return None
            self._results.move_to_end(result_id)
            return images.get(name)

    def __len__(self) -> int:
        return len(self._results)


def _size(images: dict[str, bytes]) -> int:
    return sum(len(data) for data in images.values())
