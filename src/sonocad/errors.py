"""User-facing errors: one line, naming the file and the problem, never a traceback."""

from __future__ import annotations

from pathlib import Path


class SonocadError(Exception):
    """An error the command line reports as one line and a nonzero exit code."""


class InputError(SonocadError):
    """A file a user gave us cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
