"""Every shipped recipe that no paper row covers trains two steps on real BUSI images and its
checkpoint evaluates (the papers' recipes: tests/test_reproduce_papers.py, which does the same
through benchmarks/reproduce_papers.py --scale smoke).

Small overrides (64 px, batch 2, four images per subset) keep this a smoke test of the whole
path: recipe -> data -> model -> loss -> optimiser -> checkpoint -> evaluate.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sonocad.cli import main
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.engine.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from reproduce_papers import ROWS  # noqa: E402

PAPER_RECIPES = {row.recipe for row in ROWS}
RECIPES = sorted(p for p in (ROOT / "recipes").glob("*.yaml")
                 if load_recipe(p).task in ("segmentation", "classification")
                 and p.stem not in PAPER_RECIPES)


@pytest.fixture(scope="module")
def small_split(busi_root, tmp_path_factory) -> Path:
    """Four images of each frozen subset, spread over the classes."""
    frozen = read_split(ROOT / "benchmarks" / "splits" / "busi.json")
    subsets = {name: tuple(ids[:: max(len(ids) // 4, 1)][:4])
               for name, ids in frozen.subsets.items()}
    path = tmp_path_factory.mktemp("split") / "small.json"
    write_split(path, SplitFile("BUSI", 0, "4 per subset of busi.json", subsets))
    return path


@pytest.mark.busi
@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_trains_two_steps_on_busi_and_evaluates(recipe, busi_root, small_split,
                                                       tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--data", str(busi_root), "--split", str(small_split),
                 "--out", str(run), "max_steps=2", "batch_size=2", "eval_batch_size=4",
                 # No network here; the offline ImageNet error is tested in test_models.
                 "transform.input_size=64", "data.cache=false", "model.pretrained=none"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    assert main(["evaluate", str(run / "best.pt"), "--data", str(busi_root), "--split",
                 f"{small_split}:test", "--out", str(tmp_path / "eval"), "--overlays", "1"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_images"] >= 3
