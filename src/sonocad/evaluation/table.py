"""The predictions table: one row per image, read by every statistic, comparison and report."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from sonocad.data.sample import Sample
from sonocad.errors import InputError
from sonocad.io.atomic import write_json, write_text

# Columns every table starts with; metric and probability columns follow.
ID_COLUMNS = ("image_id", "patient_id", "source", "scanner", "label")


def sample_columns(sample: Sample) -> dict[str, Any]:
    """What the table says about an image before any model has seen it."""
    return {"image_id": sample.image_id, "patient_id": sample.patient_id,
            "source": sample.source, "scanner": sample.scanner, "label": sample.label}


def write_predictions(stem: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write `stem`.csv and `stem`.json (same rows) atomically."""
    stem = Path(stem)
    fields = list(dict.fromkeys([*ID_COLUMNS, *(key for row in rows for key in row)]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="raise")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    write_text(stem.with_suffix(".csv"), buffer.getvalue())
    write_json(stem.with_suffix(".json"), [{k: _json_value(v) for k, v in r.items()} for r in rows])


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a predictions CSV, numbers parsed; empty cells become None."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "image_id" not in reader.fieldnames:
                raise InputError(path, "not a predictions table (no image_id column)")
            return [{k: _parse(v) for k, v in row.items()} for row in reader]
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
