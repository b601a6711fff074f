"""A model card's Markdown as report HTML, parsed and rendered by markdown-it (CommonMark, tables).

Raw HTML in a card stays text, so it is escaped, and links and images are written out as text
with their address in brackets, never live: the report must not point outside itself. Headings
move under the report's own, and tables take the report's table markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markupsafe import escape

from sonocad.report.html import Html, table, tag

HEADING_SHIFT = 3  # a card's "#" sits under the report's h3 "Model card"
_NUMERIC = ("text-align:right", "text-align:center")  # ---: and :-: columns, as in html.table


def render_markdown(text: str) -> Html:
    """Markdown text as HTML."""
    tokens = _MD.parse(text)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(int(token.tag[1:]) + HEADING_SHIFT, 6)}"
        # A line break after each top-level block and none inside one (`<ul><li>`), as
        # html.py writes its markup.
        token.block = token.level == 0 and token.nesting == -1
    return Html(_MD.renderer.render(_report_tables(tokens), _MD.options, {}))


def inline(text: str) -> Html:
    """One line of Markdown (code spans, emphasis, links as text) as HTML."""
    return Html(_MD.renderer.render(_MD.parseInline(text), _MD.options, {}))


def _report_tables(tokens: list[Token]) -> list[Token]:
    """The tokens, each table's run of them replaced by one block of `html.table` markup."""
    out: list[Token] = []
    in_table: list[Token] | None = None
    for token in tokens:
        if token.type == "table_open":
            in_table = []
        elif token.type == "table_close" and in_table is not None:
            out.append(Token("html_block", "", 0, content=_table(in_table) + "\n"))
            in_table = None
        elif in_table is not None:
            in_table.append(token)
        else:
            out.append(token)
    return out


def _table(tokens: list[Token]) -> Html:
    rows: list[list[Html]] = []
    numeric: set[int] = set()
    for token in tokens:
        if token.type == "tr_open":
            rows.append([])
        elif token.type == "th_open" and token.attrGet("style") in _NUMERIC:
            numeric.add(len(rows[-1]))
        elif token.type == "inline":
            rows[-1].append(Html(_MD.renderer.renderInline(token.children or [], _MD.options, {})))
    return table(rows[0], rows[1:], numeric=numeric)


def _link_open(self: RendererHTML, tokens: Sequence[Token], idx: int, options: Any,
               env: Any) -> str:
    return ""


def _link_close(self: RendererHTML, tokens: Sequence[Token], idx: int, options: Any,
                env: Any) -> str:
    # Links cannot nest, so the nearest link_open before this one opened it.
    opening = next(token for token in reversed(tokens[:idx]) if token.type == "link_open")
    if opening.markup == "autolink":  # <https://...>: the text is the address already
        return ""
    return " " + tag("span", f"({opening.attrGet('href')})", class_="small")


def _image(self: RendererHTML, tokens: Sequence[Token], idx: int, options: Any,
           env: Any) -> str:
    image = tokens[idx]
    alt = self.renderInlineAsText(image.children or [], options, env)
    return escape(alt) + " " + tag("span", f"({image.attrGet('src')})", class_="small")


_MD = MarkdownIt("commonmark", {"html": False}).enable("table")  # raw HTML is parsed as text
for _name, _rule in (("link_open", _link_open), ("link_close", _link_close), ("image", _image)):
    _MD.add_render_rule(_name, _rule)
