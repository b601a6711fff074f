"""Several data sources: weighted epochs, the recipe's sources, per-source validation columns,
and `sonocad evaluate` per source with a pooled row (BUSI + BUS-BRA, skipped where absent)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from sonocad.cli import main
from sonocad.data.sources import class_weights, resolve_sources
from sonocad.data.split import SplitFile, read_split, write_split
from sonocad.data.torch_dataset import EpochBatches
from sonocad.errors import SonocadError
from sonocad.predictions import read_predictions

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SPLITS = PROJECT_ROOT / "benchmarks" / "splits"


def _epoch(sampler: EpochBatches) -> list[int]:
    return [index for batch in sampler for index, _seed in batch]


def test_unit_draws_keep_the_plain_permutation():
    plain = EpochBatches(10, 2, seed=1, epoch=3)
    weighted = EpochBatches(10, 2, seed=1, epoch=3, draws=[1.0] * 10)
    assert list(plain) == list(weighted)
    assert sorted(_epoch(plain)) == list(range(10))


def test_draws_repeat_whole_parts_and_sample_fractions_without_replacement():
    draws = [2.0, 1.0, 0.5, 0.5, 0.5, 0.5]  # 5 per epoch
    seen = Counter()
    for epoch in range(200):
        sampler = EpochBatches(6, 5, seed=0, epoch=epoch, draws=draws)
        items = Counter(_epoch(sampler))
        assert sum(items.values()) == EpochBatches.epoch_size(draws) == 5
        assert items[0] == 2 and items[1] == 1  # whole parts every epoch
        assert all(items[i] <= 1 for i in range(2, 6))  # fractions: at most once
        seen.update(items)
        assert _epoch(sampler) == _epoch(EpochBatches(6, 5, seed=0, epoch=epoch, draws=draws))
    for i in range(2, 6):  # each half-weight item drawn in about half of the epochs
        assert 70 <= seen[i] <= 130


def test_sources_come_from_the_command_line_before_the_recipe(tmp_path):
    recipe = [{"name": "a", "path": "x", "split": "x.json", "weight": 0.5}]
    assert resolve_sources(recipe)[0].weight == 0.5
    given = resolve_sources(recipe, [tmp_path / "busi"], [tmp_path / "s.json"])
    assert [(s.name, s.weight) for s in given] == [("busi", 1.0)]
    with pytest.raises(SonocadError, match="one --split per --data"):
        resolve_sources(None, [tmp_path / "a", tmp_path / "b"], [tmp_path / "s.json"])
    with pytest.raises(SonocadError, match="must differ"):
        resolve_sources([{"path": "a/busi", "split": "1"}, {"path": "b/busi", "split": "2"}])
    with pytest.raises(SonocadError, match="no training data"):
        resolve_sources(None)
    with pytest.raises(SonocadError, match=r"data.sources\[0\].weight must be a positive number"):
        resolve_sources([{"path": "a", "split": "b", "weight": "heavy"}])


def test_class_weights_are_checked_with_one_clear_line():
    assert class_weights({"normal": 1.5}) == {"normal": 1.5} and class_weights(None) == {}
    with pytest.raises(SonocadError, match="data.class_weights.normal must be a positive"):
        class_weights({"normal": "lots"})
    with pytest.raises(SonocadError, match="must map class names"):
        class_weights([1.5])


def _first_test_images(split_file: Path, out: Path, n: int) -> Path:
    split = read_split(split_file)
    write_split(out, SplitFile(split.dataset, 0, "first test images",
                               {"test": split.subsets["test"][:n]}))
    return out


@pytest.fixture(scope="module")
def two_source_run(busi_root, busbra_root, tmp_path_factory) -> Path:
    """`sonocad train recipes/default.yaml` with its two sources, two steps, from the root."""
    run = tmp_path_factory.mktemp("two_sources") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(PROJECT_ROOT)  # the recipe's paths are relative to the project root
        assert main(["train", "recipes/default.yaml", "--out", str(run), "max_steps=2",
                     "data.limit=12", "batch_size=4"]) == 0
    return run


def test_default_recipe_trains_on_both_sources_with_per_source_columns(two_source_run):
    with (two_source_run / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for source in ("busi", "busbra"):
        for metric in ("lesion_iou", "macro_f1", "joint"):
            assert rows[-1][f"val_{source}_{metric}"] != ""
    assert float(rows[-1]["val_joint"]) >= 0


def test_evaluate_reports_each_source_and_the_image_weighted_pool(
        two_source_run, busi_root, busbra_root, tmp_path, capsys):
    busi = _first_test_images(SPLITS / "busi.json", tmp_path / "busi.json", 10)
    busbra = _first_test_images(SPLITS / "busbra.json", tmp_path / "busbra.json", 10)
    out = tmp_path / "eval"
    assert main(["evaluate", str(two_source_run / "best.pt"), "--data", str(busi_root),
                 "--split", f"{busi}:test", "--data", str(busbra_root), "--split",
                 f"{busbra}:test", "--out", str(out), "--by", "scanner",
                 "--overlays", "0"]) == 0
    printed = capsys.readouterr().out
    assert "by source" in printed and "by scanner" in printed
    for name in ("busi ", "busbra ", "pooled ", "GE LOGIQ E9 "):
        assert name in printed
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    groups = metrics["breakdowns"]["source"]["groups"]
    assert groups["busi"]["n_images"] == groups["busbra"]["n_images"] == 10
    assert groups["busbra"]["ci_unit"] == "patients" and groups["busi"]["ci_unit"] == "images"
    for key in ("lesion_iou", "lesion_dice"):
        parts = [groups[name][key] for name in ("busi", "busbra")]
        weighted = sum(p["mean"] * p["n"] for p in parts) / sum(p["n"] for p in parts)
        assert groups["pooled"][key]["mean"] == pytest.approx(weighted, rel=1e-9)
        assert groups["pooled"][key]["n"] == sum(p["n"] for p in parts)
        assert groups["pooled"][key]["ci_low"] <= groups["pooled"][key]["mean"]
    rows = read_predictions(out / "predictions.csv")
    assert Counter(r["source"] for r in rows) == {"busi": 10, "busbra": 10}
    assert all(r["scanner"] for r in rows)


def test_evaluate_reports_any_clinical_field_by_group(busbra_root, tmp_path, capsys):
    """Issue 30: BUS-BRA's BI-RADS reaches the predictions table and `--by birads` reports
    each category with CIs; a field the images lack is refused before any prediction."""
    busbra = _first_test_images(SPLITS / "busbra.json", tmp_path / "busbra.json", 12)
    out = tmp_path / "eval"
    assert main(["evaluate", "default", "--data", str(busbra_root), "--split",
                 f"{busbra}:test", "--out", str(out), "--by", "birads", "--overlays", "0"]) == 0
    printed = capsys.readouterr().out
    rows = read_predictions(out / "predictions.csv")
    categories = {str(row["birads"]) for row in rows}
    assert categories and all(row.get("histology") for row in rows)
    assert "by birads" in printed
    import json

    groups = json.loads((out / "metrics.json").read_text())["breakdowns"]["birads"]["groups"]
    assert set(groups) == categories | {"pooled"}
    assert sum(groups[name]["n_images"] for name in categories) == 12
    code = main(["evaluate", "default", "--data", str(busbra_root), "--split", f"{busbra}:test",
                 "--out", str(tmp_path / "refused"), "--by", "bi-rads"])
    error = capsys.readouterr().err.strip()
    assert code != 0 and error.count("\n") == 0
    assert "--by bi-rads: no such field in these images" in error and "birads" in error
    assert not (tmp_path / "refused").exists()
