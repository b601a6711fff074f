"""Which rows of two predictions tables are the same image (`sonocad compare`).

An image's identity is its ``image_id`` (with its ``frame`` for a frame of a multi-frame file).
`sonocad evaluate` writes ids relative to the data set's root (``benign/benign (10).png``);
`sonocad predict` writes them relative to the folder it was given, so a predict run on BUSI's
``benign/`` folder says ``benign (10).png`` and keeps the path it read in its ``file`` column.
Where ids alone do not pair every row of the smaller table, these keys are tried in order and
the first that does (else the one that pairs the most rows) joins the tables:

1. ``image_id``;
2. ``file path``: the ``file`` column resolved to an absolute path (relative paths against the
   folder compare runs in);
3. ``path suffix``: one row's path (its ``file``, or its ``image_id``) is the trailing part of
   the other's: ``benign (10).png`` matches ``benign/benign (10).png`` and
   ``/data/BUSI/benign/benign (10).png``;
4. ``file content (sha256)``: the SHA-256 of the bytes of each readable ``file``, where both
   tables have one.

Under every key a row is paired only when the match is one to one; a row matching several
rows of the other table is left out, as is one matching none, and both are counted.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sonocad.io.digest import file_sha256

IMAGE_ID = "image_id"
FILE_PATH = "file path"
PATH_SUFFIX = "path suffix"
CONTENT = "file content (sha256)"
KEYS = (IMAGE_ID, FILE_PATH, PATH_SUFFIX, CONTENT)
FILE_COLUMN = "file"

Row = dict[str, Any]


@dataclass(frozen=True)
class Join:
    """Pairs of row positions (A, B), in A's order, and the key that made them."""

    key: str
    pairs: list[tuple[int, int]]
    n_a: int
    n_b: int
    only_a: list[str] = field(default_factory=list)  # ids of A's rows left out
    only_b: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: the key, the rows paired and those left out on each side."""
        def left(side: str, ids: list[str], n: int) -> str:
            return f"{len(ids)} of {n} rows of {side}" + (f" (e.g. {ids[0]!r})" if ids else "")

        return (f"joined on {self.key}: {len(self.pairs)} images matched; left out "
                f"{left('A', self.only_a, self.n_a)}, {left('B', self.only_b, self.n_b)}")


def join_rows(rows_a: list[Row], rows_b: list[Row], *,
              cwd: Path | None = None) -> Join:
    """The best join of two tables' rows (see the module's docstring)."""
    wanted = min(len(rows_a), len(rows_b))
    best: tuple[str, list[tuple[int, int]]] = (IMAGE_ID, [])
    for key in KEYS:
        candidates = _candidates(key, rows_a, rows_b, cwd or Path.cwd())
        if candidates is None:
            continue
        pairs = _one_to_one(candidates)
        if len(pairs) > len(best[1]):
            best = (key, pairs)
        if len(pairs) == wanted:
            break
    key, pairs = best
    paired_a, paired_b = {i for i, _ in pairs}, {j for _, j in pairs}
    return Join(key, pairs, len(rows_a), len(rows_b),
                [_label(r) for i, r in enumerate(rows_a) if i not in paired_a],
                [_label(r) for j, r in enumerate(rows_b) if j not in paired_b])


# --- keys ---------------------------------------------------------------------------------

def _candidates(key: str, rows_a: list[Row], rows_b: list[Row],
                cwd: Path) -> list[set[int]] | None:
    """For each row of A, the rows of B it matches under `key`; None: the key does not apply."""
    if key == IMAGE_ID:
        return _equal_keys(rows_a, rows_b, lambda row: _framed([row.get(IMAGE_ID)], row))
    if key == PATH_SUFFIX:
        return _suffix_matches(rows_a, rows_b)
    if not (_has_files(rows_a) and _has_files(rows_b)):
        return None
    if key == FILE_PATH:
        return _equal_keys(rows_a, rows_b,
                           lambda row: _framed([_absolute(row, cwd)], row))
    hashes: dict[Path, str | None] = {}

    def content(row: Row) -> set[Hashable]:
        path = _absolute(row, cwd)
        if path is not None and path not in hashes:
            try:
                hashes[path] = file_sha256(path) if path.is_file() else None
            except OSError:
                hashes[path] = None
        return _framed([hashes.get(path) if path is not None else None], row)

    return _equal_keys(rows_a, rows_b, content)


def _equal_keys(rows_a: list[Row], rows_b: list[Row],
                keys: Callable[[Row], set[Hashable]]) -> list[set[int]]:
    index: dict[Hashable, set[int]] = defaultdict(set)
    for j, row in enumerate(rows_b):
        for k in keys(row):
            index[k].add(j)
    return [set().union(*(index.get(k, set()) for k in keys(row))) for row in rows_a]


def _suffix_matches(rows_a: list[Row], rows_b: list[Row]) -> list[set[int]]:
    """Rows of B whose path ends with one of A's row's paths, or whose path one of A's ends
    with (whole path parts: ``x/1.png`` does not end with ``y/1.png``)."""
    full_b: dict[Hashable, set[int]] = defaultdict(set)
    tails_b: dict[Hashable, set[int]] = defaultdict(set)
    for j, row in enumerate(rows_b):
        for parts in _paths(row):
            full_b[parts].add(j)
            for tail in _tails(parts):
                tails_b[tail].add(j)
    matches = []
    for row in rows_a:
        found: set[int] = set()
        for parts in _paths(row):
            found |= tails_b.get(parts, set())
            for tail in _tails(parts):
                found |= full_b.get(tail, set())
        matches.append(found)
    return matches


def _one_to_one(candidates: list[set[int]]) -> list[tuple[int, int]]:
    back: dict[int, int] = defaultdict(int)
    for found in candidates:
        for j in found:
            back[j] += 1
    return [(i, next(iter(found))) for i, found in enumerate(candidates)
            if len(found) == 1 and back[next(iter(found))] == 1]


# --- helpers ------------------------------------------------------------------------------

def _framed(values: Iterable[Any], row: Row) -> set[Hashable]:
    """The row's keys, each with its frame (None for a single image); no key for a None."""
    return {(value, row.get("frame")) for value in values if value is not None}


def _paths(row: Row) -> set[tuple[Any, ...]]:
    """The row's path parts: of its ``file`` and of its ``image_id``, each with its frame."""
    paths = set()
    for text in (row.get(FILE_COLUMN), row.get(IMAGE_ID)):
        if text:
            parts = PurePosixPath(str(text).replace("\\", "/")).parts
            if parts:
                paths.add((*parts, ("frame", row.get("frame"))))
    return paths


def _tails(parts: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    """The proper trailing parts of a path (its frame kept), shortest one file name."""
    *names, frame = parts
    return [(*names[k:], frame) for k in range(1, len(names))]


def _has_files(rows: list[Row]) -> bool:
    return any(row.get(FILE_COLUMN) for row in rows)


def _absolute(row: Row, cwd: Path) -> Path | None:
    text = row.get(FILE_COLUMN)
    if not text:
        return None
    path = Path(str(text))
    try:
        return (path if path.is_absolute() else cwd / path).resolve()
    except (OSError, RuntimeError):
        return None


def _label(row: Row) -> str:
    frame = row.get("frame")
    return str(row.get(IMAGE_ID)) + (f" frame {frame}" if frame is not None else "")
