"""The predictions table: one row per image, read by every statistic, comparison and report."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import IO, Any

from sonocad.data.sample import Sample
from sonocad.errors import InputError
from sonocad.io.atomic import write_json, write_text
from sonocad.io.outputs import record_write

# Columns every table starts with; metric and probability columns follow.
ID_COLUMNS = ("image_id", "patient_id", "source", "scanner", "label")


def sample_columns(sample: Sample) -> dict[str, Any]:
    """What the table says about an image before any model has seen it."""
    return {"image_id": sample.image_id, "patient_id": sample.patient_id,
            "source": sample.source, "scanner": sample.scanner, "label": sample.label}


def write_predictions(stem: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write `stem`.csv and `stem`.json (same rows) atomically."""
    stem = Path(stem)
    write_text(stem.with_suffix(".csv"), _csv_text(_columns(rows), rows))
    _write_json_rows(stem, rows)


class PredictionsStream:
    """A predictions table written as rows come: `stem`.csv grows row by row, flushed, so a
    killed run leaves a valid table up to its last whole row; `close` adds `stem`.json.

    With ``resume`` an earlier table is kept (a torn last row dropped) and `earlier` holds its
    rows; new rows must have its columns. Every row of one call to `add` lands in one write.
    """

    def __init__(self, stem: str | Path, *, resume: bool = False) -> None:
        self.stem = Path(stem)
        self.path = self.stem.with_suffix(".csv")
        self.earlier: list[dict[str, Any]] = []
        self._fields: list[str] | None = None
        self._handle: IO[str] | None = None
        if resume and self.path.exists():
            self._fields, self.earlier = _whole_rows(self.path)
            write_text(self.path, _csv_text(self._fields, self.earlier) if self._fields else "")
        self.rows: list[dict[str, Any]] = list(self.earlier)

    def add(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        if self._fields is None:
            self._fields = _columns(rows)
        if self._handle is None:
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            if fresh:
                record_write(self.path)
            self._handle = self.path.open("a" if not fresh else "w", newline="",
                                          encoding="utf-8")
            if fresh:
                self._handle.write(_csv_text(self._fields, []))
        extra = {key for row in rows for key in row} - set(self._fields)
        if extra:
            raise InputError(self.path, f"the table has no column {sorted(extra)[0]!r}: it was "
                                        "written by another model; predict into a new folder")
        self._handle.write(_csv_text(self._fields, rows, header=False))
        self._handle.flush()
        self.rows.extend(rows)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._fields is None:  # no rows at all: still a table, with the id columns
            write_text(self.path, _csv_text(list(ID_COLUMNS), []))
        _write_json_rows(self.stem, self.rows)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys([*ID_COLUMNS, *(key for row in rows for key in row)]))


def _csv_text(fields: list[str], rows: list[dict[str, Any]], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="raise")
    if header:
        writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def _write_json_rows(stem: Path, rows: list[dict[str, Any]]) -> None:
    write_json(stem.with_suffix(".json"), [{k: _json_value(v) for k, v in r.items()} for r in rows])


def _whole_rows(path: Path) -> tuple[list[str] | None, list[dict[str, Any]]]:
    """The columns and complete rows of a table a killed run may have left torn at its end."""
    text = path.read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    if rows and not text.endswith("\n"):
        rows.pop()  # the kill came in the middle of this row
    fields = list(reader.fieldnames) if reader.fieldnames else None
    return fields, [_parsed(row) for row in rows]


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a predictions CSV, numbers parsed (but not in `TEXT_COLUMNS`: ids stay text);
    empty cells become None."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "image_id" not in reader.fieldnames:
                raise InputError(path, "not a predictions table (no image_id column)")
            return [_parsed(row) for row in reader]
    except FileNotFoundError:
        raise InputError(path, "no such predictions table") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"unreadable predictions table ({exc})") from None


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _json_value(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


# Read as text, never as numbers: patient "01" and patient "1" are two people.
TEXT_COLUMNS = frozenset({*ID_COLUMNS, "file", "output_name"})


def _parsed(row: dict[str, str | None]) -> dict[str, Any]:
    return {key: (value or None) if key in TEXT_COLUMNS else _parse(value)
            for key, value in row.items()}


def _parse(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
