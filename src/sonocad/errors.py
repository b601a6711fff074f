"""User-facing errors: one line, naming the file and the problem, never a traceback."""

from __future__ import annotations

from pathlib import Path


class SonocadError(Exception):
    """An error the command line reports as one line and a nonzero exit code."""


class InputError(SonocadError):
    """A file a user gave us cannot be used; the message names the file and the problem.

    The message is always one line: whitespace runs in `problem` (Pillow and pydicom messages
    carry newlines) become one space, other control characters are escaped, and a path that
    holds any (a newline in a file name, say) is shown quoted, as Python's repr writes it.
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = _one_line(problem)
        shown = str(path)
        if not shown.isprintable():
            shown = repr(shown)
        super().__init__(f"{shown}: {self.problem}")


def _one_line(text: str) -> str:
    collapsed = " ".join(text.split())
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in collapsed)
