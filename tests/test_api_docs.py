"""docs/api.md runs as written: its ```python blocks, executed in order in one namespace, in an
empty folder (they make their own phantoms; no data set needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT

API_PAGE = PROJECT_ROOT / "docs" / "api.md"
# A fenced block: ```python at the start of a line, up to the next ``` line.
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) of each ```python block of `page`."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in PYTHON_BLOCK.finditer(text)]


def test_the_page_has_examples_for_each_piece() -> None:
    code = "\n".join(block for _, block in python_blocks(API_PAGE))
    for name in ("Predictor.default()", "load_checkpoint(", "evaluate(", "read_predictions(",
                 "compare_evaluations("):
        assert name in code, f"docs/api.md has no example calling {name}"


@pytest.mark.slow
def test_every_python_block_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "api_docs"}
    for line, code in python_blocks(API_PAGE):
        try:
            exec(compile(code, f"{API_PAGE}:{line}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"the block at docs/api.md line {line} failed: "
                                 f"{type(exc).__name__}: {exc}") from exc
