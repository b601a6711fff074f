"""Pixel spacing (mm per pixel, (row, column)): one grammar, one precedence, one way to write it.

- `parse_spacing` reads one positive number (square pixels) or two (row, column), separated by
  a comma, a semicolon, an "x" or spaces: "0.1", "0.1,0.2", "0.1 x 0.2". What `spacing_text`
  writes into a predictions table (0.1, or "0.1 x 0.2") reads back: `--spacing`, a manifest's
  ``pixel_spacing_mm`` and the viewer's field all take it.
- `resolve_spacing` is the one precedence every command uses (data, predict, evaluate, explain,
  outline, serve): the file's own calibration (DICOM PixelSpacing or ultrasound regions) first,
  then the manifest's row, then the option; the second value says which (`SPACING_SOURCES`).
"""

from __future__ import annotations

import math
import re

Spacing = tuple[float, float]  # (row, column) mm per pixel
SPACING_SOURCES = ("dicom", "manifest", "option")
_SEPARATORS = re.compile(r"\s*[,;xX]\s*|\s+")


def parse_spacing(text: str) -> Spacing:
    """'0.1', '0.1,0.2' or '0.1 x 0.2' -> (row, column) mm per pixel; else a `ValueError`."""
    try:
        values = [float(value) for value in _SEPARATORS.split(text.strip()) if value]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{text!r} is not one or two positive numbers of mm per pixel")
    return values[0], values[-1]


def spacing_text(spacing: Spacing | None) -> float | str | None:
    """0.1 for square pixels, "0.1 x 0.2" (row x column mm) otherwise, None when unknown."""
    if spacing is None:
        return None
    row, column = spacing
    return row if row == column else f"{row:g} x {column:g}"


def resolve_spacing(own: Spacing | None, manifest: Spacing | None = None,
                    option: Spacing | None = None) -> tuple[Spacing | None, str | None]:
    """(the spacing an image is measured with, where it came from): its file's own first,
    then its manifest row's, then the option's; (None, None) where none is known."""
    for spacing, source in zip((own, manifest, option), SPACING_SOURCES):
        if spacing is not None:
            return spacing, source
    return None, None
