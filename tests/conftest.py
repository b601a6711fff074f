"""Shared fixtures. Tests that need the real BUSI data skip with a reason where it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUSI_ROOT = PROJECT_ROOT.parent / "shared" / "datasets" / "busi" / "Dataset_BUSI_with_GT"
BUSBRA_ROOT = PROJECT_ROOT.parent / "shared" / "datasets" / "busbra" / "BUSBRA"


@pytest.fixture(scope="session")
def busi_root() -> Path:
    """The BUSI folder beside the project (../shared/datasets/busi/Dataset_BUSI_with_GT)."""
    if not (BUSI_ROOT / "benign").is_dir():
        pytest.skip(f"BUSI data set not found at {BUSI_ROOT} (see ../shared/datasets/README.md)")
    return BUSI_ROOT


@pytest.fixture(scope="session")
def busi_duplicate_groups(busi_root: Path) -> list:
    """BUSI's duplicate groups, searched once for the tests that check them (10 s)."""
    from sonocad.data.adapters import open_dataset
    from sonocad.data.duplicates import find_duplicate_groups

    return find_duplicate_groups(open_dataset(busi_root))


@pytest.fixture(scope="session")
def busbra_root() -> Path:
    """The BUS-BRA folder beside the project (../shared/datasets/busbra/BUSBRA)."""
    if not (BUSBRA_ROOT / "bus_data.csv").is_file():
        pytest.skip(f"BUS-BRA data set not found at {BUSBRA_ROOT} "
                    "(see ../shared/datasets/README.md)")
    return BUSBRA_ROOT


@pytest.fixture(autouse=True)
def _release_output_claims():
    """Each test's output folders are unlocked after it, as a command's are when it ends."""
    from sonocad.io.outputs import release_claims

    yield
    release_claims()


@pytest.fixture(autouse=True)
def _progress_lines_at_the_old_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """No progress line within a test's first 30 s (FIRST_LOG_S is 2 s), so that a test's
    stderr does not depend on the machine's speed; tests/test_progress_units.py sets its own."""
    from sonocad import progress

    monkeypatch.setattr(progress, "FIRST_LOG_S", progress.LOG_EVERY_S)
