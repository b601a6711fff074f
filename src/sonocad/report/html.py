"""HTML building blocks for the report: jinja2 templates with autoescape, one inline style sheet.

Text is escaped whenever it enters a page; only `Html` values (made by these functions and the
templates) pass through as markup, so a file name or a model card can never inject tags. Tables
and figures are numbered by CSS counters, so the page needs no script and sections can be
assembled in any order. A table of more than `MAX_COLUMNS` columns is cut into several, each
repeating the row headers, so that every column shows on a printed page (no scroll bar there).
The templates and the style sheet are package data in `templates/`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import jinja2
from markupsafe import Markup, escape

# The columns a printed A4 page holds with estimates and their CIs: a row header and six values.
MAX_COLUMNS = 7

# Markup the package made itself: it passes through a template as it is, anything else is escaped.
Html = Markup

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("sonocad.report", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
_BLOCKS = _ENV.get_template("blocks.html.j2").module


def join(parts: Iterable[object], sep: str = "\n") -> Html:
    return Markup(sep).join(escape(part) for part in parts)


def tag(name: str, content: object = "", **attributes: str | None) -> Html:
    """`<name attr="...">content</name>`; `class_` stands for `class`, None drops an attribute."""
    return _BLOCKS.tag(name, content, {key.rstrip("_").replace("_", "-"): value
                                       for key, value in attributes.items()})


def number(value: float | int | None, digits: int = 3) -> Html:
    """A number for a table or card; undefined values read 'n/a', integers keep separators."""
    if not _defined(value):
        return tag("span", "n/a", class_="na")
    if isinstance(value, int):
        return escape(f"{value:,}")
    return escape(f"{value:.{digits}f}")


def estimate(mean: float | None, low: float | None = None, high: float | None = None) -> Html:
    """'0.712 0.680–0.741': the estimate, then its 95 % CI in muted type (when there is one)."""
    if not all(_defined(value) for value in (mean, low, high)):
        return number(mean)
    return number(mean) + tag("span", f"{low:.3f}–{high:.3f}", class_="ci")


def table(header: Sequence[object] | None, rows: Iterable[Sequence[object]], *,
          caption: object | None = None, numeric: Iterable[int] = ()) -> Html:
    """A table (without a header row when `header` is None); the columns at `numeric`
    positions are right-aligned in tabular figures and the first cell of each row is its
    header. A wider table than `MAX_COLUMNS` continues below itself with the rest of its
    columns, the row headers repeated."""
    rows, numeric = [list(row) for row in rows], set(numeric)
    width = len(header) if header else max(map(len, rows), default=0)
    step = MAX_COLUMNS - 1
    pieces = []
    for start in range(1, max(width, 2), step):
        kept = [0, *range(start, min(start + step, width))]
        pieces.append(_BLOCKS.table(
            [header[k] for k in kept] if header else None,
            [[row[k] for k in kept] for row in rows], caption,
            {position for position, k in enumerate(kept) if k in numeric}, start > 1))
    return tag("div", join(pieces), class_="table-wrap")


def figure(uri: str, caption: object, *, alt: str, wide: bool = False) -> Html:
    return _BLOCKS.figure(uri, caption, alt, wide)


def figures(items: Iterable[Html]) -> Html:
    return tag("div", join(items), class_="figures")


def cards(items: Iterable[tuple[str, Html]]) -> Html:
    """Headline numbers as a row of cards: (label, value markup)."""
    return _BLOCKS.cards(items)


def note(text: object) -> Html:
    return tag("p", text, class_="note")


def page(title: str, facts: Sequence[tuple[str, object]], contents: Sequence[tuple[str, str]],
         body: Html, footer: object) -> str:
    """The whole document: a masthead with `facts`, a table of contents, the body."""
    return _ENV.get_template("report.html.j2").render(
        title=title, facts=facts, contents=contents, body=body, footer=footer)


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
