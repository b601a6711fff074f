"""HTML building blocks for the report: escaped by default, styled by one inline style sheet.

Text is escaped whenever it enters a page; only `Html` values (made by these functions) pass
through as markup, so a file name or a model card can never inject tags. Tables and figures
are numbered by CSS counters, so the page needs no script and sections can be assembled in any
order.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence

CSS = """
:root { --ink: #1c2433; --muted: #5d6677; --faint: #9aa2b1; --line: #e2e6ec;
        --band: #15233f; --accent: #2a62b8; --soft: #f7f8fa; }
* { box-sizing: border-box; }
body { margin: 0; background: #eef1f5; color: var(--ink); counter-reset: figure table;
       font: 15px/1.55 "Inter", "Segoe UI", system-ui, -apple-system, "Helvetica Neue", Arial,
             "DejaVu Sans", sans-serif; }
.wrap { max-width: 1100px; margin: 0 auto; padding: 0 32px; }
header.masthead { background: var(--band); color: #fff; padding: 34px 0 26px; }
header .kicker { text-transform: uppercase; letter-spacing: .12em; font-size: 12px;
                 color: #9fb3d9; margin: 0 0 6px; }
header h1 { margin: 0 0 14px; font-size: 30px; font-weight: 650; letter-spacing: -.01em; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 18px; margin: 0;
            font-size: 14px; }
header dt { color: #9fb3d9; }
header dd { margin: 0; color: #fff; }
nav.toc { background: #fff; border-bottom: 1px solid var(--line); font-size: 14px; }
nav.toc .wrap { display: flex; flex-wrap: wrap; gap: 4px 22px; padding-top: 10px;
                padding-bottom: 10px; }
nav.toc a { color: var(--accent); text-decoration: none; }
main { padding: 8px 0 24px; }
section.block { background: #fff; border: 1px solid var(--line); border-radius: 10px;
                padding: 26px 34px 30px; margin: 24px 0;
                box-shadow: 0 1px 2px rgba(16, 24, 40, .05); }
h2 { font-size: 23px; margin: 0 0 2px; letter-spacing: -.01em; }
h2 .tag { font-size: 12px; font-weight: 600; vertical-align: middle; color: var(--accent);
          border: 1px solid #c9d7ef; background: #f1f5fc; border-radius: 999px;
          padding: 2px 10px; margin-left: 8px; letter-spacing: .02em; }
p.lead { color: var(--muted); margin: 0 0 6px; }
h3 { font-size: 17px; margin: 30px 0 10px; padding-bottom: 6px;
     border-bottom: 1px solid var(--line); }
h4 { font-size: 15px; margin: 20px 0 6px; }
p { margin: 8px 0; }
table { border-collapse: collapse; font-size: 14px; margin: 10px 0 8px; min-width: 55%; }
caption { caption-side: top; text-align: left; font-size: 13px; color: var(--muted);
          padding: 0 0 6px; }
caption::before { counter-increment: table; content: "Table " counter(table) ". ";
                  font-weight: 650; color: var(--ink); }
th, td { padding: 6px 14px 6px 0; border-bottom: 1px solid var(--line); text-align: left;
         vertical-align: baseline; }
th:last-child, td:last-child { padding-right: 0; }
thead th { font-size: 12px; font-weight: 650; text-transform: uppercase; letter-spacing: .04em;
           color: var(--muted); border-bottom: 1.5px solid #c5ccd8; }
tbody th { font-weight: 500; white-space: nowrap; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.ci { color: var(--muted); font-size: 12.5px; margin-left: 6px; }
.na { color: var(--faint); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr));
         gap: 12px; margin: 18px 0 6px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px;
        background: var(--soft); }
.card .label { font-size: 12px; color: var(--muted); text-transform: uppercase;
               letter-spacing: .04em; }
.card .value { font-size: 27px; font-weight: 650; font-variant-numeric: tabular-nums;
               line-height: 1.3; }
.card .ci { display: block; margin: 0; }
.figures { display: grid; grid-template-columns: repeat(auto-fit, minmax(250px, 1fr));
           gap: 8px 22px; align-items: start; }
figure { margin: 12px 0; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
             border-radius: 6px; background: #fff; }
.figures figure img, figure.wide img { width: 100%; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 7px; }
figcaption::before { counter-increment: figure; content: "Figure " counter(figure) ". ";
                     font-weight: 650; color: var(--ink); }
.note { border-left: 3px solid #d39b35; background: #fdf7eb; color: #5d4716; font-size: 14px;
        padding: 9px 14px; border-radius: 0 6px 6px 0; margin: 10px 0; }
.small { font-size: 13px; color: var(--muted); }
code { font-family: "DejaVu Sans Mono", ui-monospace, Menlo, Consolas, monospace;
       font-size: 12.5px; background: #f0f2f6; padding: 1px 5px; border-radius: 4px;
       overflow-wrap: anywhere; }
pre { background: #f0f2f6; padding: 10px 14px; border-radius: 6px; overflow-x: auto; }
pre code { background: none; padding: 0; }
.model-card { border: 1px solid var(--line); border-radius: 8px; padding: 6px 22px 12px;
              background: #fcfcfd; }
.model-card table { width: 100%; }
.model-card h4 { font-size: 17px; margin: 16px 0 6px; }
.model-card h5 { font-size: 15px; margin: 14px 0 4px; }
.model-card h6 { font-size: 14px; margin: 12px 0 4px; color: var(--muted); }
.table-wrap { overflow-x: auto; }
footer { color: var(--muted); font-size: 12.5px; text-align: center; padding: 10px 0 36px; }
@media print {
  body { background: #fff; }
  header.masthead { print-color-adjust: exact; -webkit-print-color-adjust: exact; }
  nav.toc { display: none; }
  section.block { border: none; box-shadow: none; padding: 0; break-before: page; }
  figure, table, .card { break-inside: avoid; }
}
"""


class Html(str):
    """Markup that is safe as it is; any other value is escaped when it enters a page."""


def escape(value: object) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value)))


def join(parts: Iterable[object], sep: str = "\n") -> Html:
    return Html(sep.join(escape(part) for part in parts))


def tag(name: str, content: object = "", **attributes: str | None) -> Html:
    """`<name attr="...">content</name>`; `class_` stands for `class`, None drops an attribute."""
    attrs = "".join(f' {key.rstrip("_").replace("_", "-")}="{html.escape(value)}"'
                    for key, value in attributes.items() if value is not None)
    return Html(f"<{name}{attrs}>{escape(content)}</{name}>")


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
    return Html(number(mean) + tag("span", f"{low:.3f}–{high:.3f}", class_="ci"))


def table(header: Sequence[object] | None, rows: Iterable[Sequence[object]], *,
          caption: object | None = None, numeric: Iterable[int] = ()) -> Html:
    """A table (without a header row when `header` is None); the columns at `numeric`
    positions are right-aligned in tabular figures and the first cell of each row is its
    header."""
    numeric = set(numeric)

    def cells(row: Sequence[object], head: bool) -> Html:
        return join((tag("th" if head or k == 0 else "td", cell,
                         class_="num" if k in numeric else None,
                         scope=None if head or k else "row")
                     for k, cell in enumerate(row)), sep="")

    body = join(tag("tr", cells(row, False)) for row in rows)
    return tag("div", tag("table", join([
        tag("caption", caption) if caption is not None else "",
        tag("thead", tag("tr", cells(header, True))) if header else "",
        tag("tbody", body)])), class_="table-wrap")


def figure(uri: str, caption: object, *, alt: str, wide: bool = False) -> Html:
    return tag("figure", join([Html(f'<img src="{html.escape(uri)}" alt="{html.escape(alt)}">'),
                               tag("figcaption", caption)]), class_="wide" if wide else None)


def figures(items: Iterable[Html]) -> Html:
    return tag("div", join(items), class_="figures")


def cards(items: Iterable[tuple[str, Html]]) -> Html:
    """Headline numbers as a row of cards: (label, value markup)."""
    return tag("div", join(tag("div", join([tag("div", label, class_="label"),
                                            tag("div", value, class_="value")]), class_="card")
                           for label, value in items), class_="cards")


def note(text: object) -> Html:
    return tag("p", text, class_="note")


def page(title: str, facts: Sequence[tuple[str, object]], contents: Sequence[tuple[str, str]],
         body: Html, footer: object) -> str:
    """The whole document: a masthead with `facts`, a table of contents, the body."""
    masthead = tag("header", tag("div", join([
        tag("p", "sonocad · breast ultrasound AI", class_="kicker"), tag("h1", title),
        tag("dl", join(join([tag("dt", key), tag("dd", value)], sep="")
                       for key, value in facts))]),
        class_="wrap"), class_="masthead")
    toc = tag("nav", tag("div", join(tag("a", text, href=f"#{anchor}")
                                     for anchor, text in contents), class_="wrap"),
              class_="toc")
    return ("<!DOCTYPE html>\n" + tag("html", join([
        tag("head", join([Html('<meta charset="utf-8">'),
                          Html('<meta name="viewport" content="width=device-width, '
                               'initial-scale=1">'),
                          tag("title", title), tag("style", Html(CSS))])),
        tag("body", join([masthead, toc, tag("main", body, class_="wrap"),
                          tag("footer", footer, class_="wrap")]))]), lang="en") + "\n")


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)
