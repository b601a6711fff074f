"""The little Markdown a model card uses, as HTML: headings, paragraphs, lists, tables, code.

Not a general Markdown engine (none is a dependency, and a card needs no more). Every piece of
text is escaped before it is marked up, and links are written out as text with their address
in brackets, never as a live link: the report must not point outside itself.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

from sonocad.report.html import Html, join, table, tag

HEADING_SHIFT = 3  # a card's "#" sits under the report's h3 "Model card"
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*[-*+]\s+(.*)$")
_NUMBERED = re.compile(r"^\s*\d+[.)]\s+(.*)$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_INLINE = (
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'\1 <span class="small">(\2)</span>'),
    (re.compile(r"&lt;(https?://[^\s&]+)&gt;"), r"\1"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?![\s*])(.+?)(?<![\s*])\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"(?<![\w_])_(?![\s_])(.+?)(?<![\s_])_(?![\w_])"), r"<em>\1</em>"),
)


def render_markdown(text: str) -> Html:
    """Markdown text as HTML, one block at a time."""
    blocks: list[Html] = []
    lines = text.replace("\r\n", "\n").split("\n")
    k = 0
    while k < len(lines):
        line = lines[k]
        if not line.strip():
            k += 1
        elif line.lstrip().startswith("```"):
            end = _find(lines, k + 1, lambda s: s.lstrip().startswith("```"))
            blocks.append(tag("pre", tag("code", "\n".join(lines[k + 1:end]))))
            k = end + 1
        elif match := _HEADING.match(line):
            level = min(len(match.group(1)) + HEADING_SHIFT, 6)
            blocks.append(tag(f"h{level}", inline(match.group(2))))
            k += 1
        elif line.lstrip().startswith("|") and k + 1 < len(lines) and \
                _TABLE_RULE.match(lines[k + 1]):
            end = _find(lines, k + 2, lambda s: not s.lstrip().startswith("|"))
            blocks.append(_table(lines[k], lines[k + 1], lines[k + 2:end]))
            k = end
        elif _BULLET.match(line) or _NUMBERED.match(line):
            pattern = _BULLET if _BULLET.match(line) else _NUMBERED
            items, k = _list_items(lines, k, pattern)
            blocks.append(tag("ul" if pattern is _BULLET else "ol",
                              join(tag("li", inline(item)) for item in items)))
        else:
            end = _find(lines, k + 1, lambda s: not s.strip() or _starts_block(s))
            blocks.append(tag("p", inline(" ".join(s.strip() for s in lines[k:end]))))
            k = end
    return join(blocks)


def inline(text: str) -> Html:
    """Code spans kept literal; emphasis, strong and links marked up in the rest."""
    pieces = text.split("`")
    out = []
    for index, piece in enumerate(pieces):
        escaped = html.escape(piece, quote=False)
        if index % 2:  # inside a code span (an unmatched last backtick stays text)
            out.append(f"<code>{escaped}</code>" if index < len(pieces) - 1 else f"`{escaped}")
            continue
        for pattern, replacement in _INLINE:
            escaped = pattern.sub(replacement, escaped)
        out.append(escaped)
    return Html("".join(out))


def _starts_block(line: str) -> bool:
    return bool(_HEADING.match(line) or _BULLET.match(line) or _NUMBERED.match(line)
                or line.lstrip().startswith(("```", "|")))


def _find(lines: list[str], start: int, stop: Callable[[str], bool]) -> int:
    """The index of the first line from `start` on where `stop` holds, else len(lines)."""
    return next((k for k in range(start, len(lines)) if stop(lines[k])), len(lines))


def _list_items(lines: list[str], k: int, pattern: re.Pattern[str]) -> tuple[list[str], int]:
    """Items of one list (indented lines continue the item above) and the index after it."""
    items: list[str] = []
    while k < len(lines) and lines[k].strip():
        match = pattern.match(lines[k])
        if match:
            items.append(match.group(1).strip())
        elif lines[k].startswith((" ", "\t")) and items:
            items[-1] += " " + lines[k].strip()
        else:
            break
        k += 1
    return items, k


def _table(header: str, rule: str, rows: list[str]) -> Html:
    numeric = [k for k, cell in enumerate(_cells(rule)) if cell.endswith(":")]
    return table([inline(cell) for cell in _cells(header)],
                 [[inline(cell) for cell in _cells(row)] for row in rows], numeric=numeric)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]
