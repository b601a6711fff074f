"""`sonocad train --folds all`: one run per fold, pooled out-of-fold table, mean and SD."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.data.split import make_folds, read_split, write_split
from sonocad.errors import InputError
from sonocad.predictions import read_predictions

TINY_RECIPE = """\
task: multitask
model: {name: efficientnet_lite0_unet}
data: {classes: [normal, benign, malignant]}
transform: {input_size: 32, normalize: imagenet, keep_aspect: false}
loss: {name: bce_dice}
optimizer: {name: adamw, lr: 0.003}
train: {batch_size: 4, epochs: 1, max_steps: 2, eval_batch_size: 8}
"""


@pytest.fixture(scope="module")
def folds(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cv")
    data = root / "data"
    write_phantom_dataset(data, per_class=4, size=(48, 48), seed=5)
    split = root / "kfold.json"
    write_split(split, make_folds(open_dataset(data), [], k=3, seed=0))
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_RECIPE)
    return data, split, recipe


def test_three_folds_train_pool_their_out_of_fold_predictions_and_summarise(folds, tmp_path,
                                                                             capsys):
    data, split, recipe = folds
    out = tmp_path / "cv"
    args = ["train", str(recipe), "--data", str(data), "--split", str(split), "--out", str(out),
            "--folds", "all"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| metric | fold0 | fold1 | fold2 | mean | SD |" in printed
    subsets = read_split(split).subsets
    for fold in ("fold0", "fold1", "fold2"):
        meta = json.loads((out / fold / "summary.json").read_text())
        assert meta["steps"] == 2
    # Each fold's model trained on the other two folds and was selected on its own.
    from sonocad.checkpoint import load_checkpoint

    fold1 = load_checkpoint(out / "fold1" / "best.pt").meta["data"]
    assert fold1["train_subsets"] == ["fold0", "fold2"] and fold1["val_subset"] == "fold1"

    # The pooled table: every image once, in evaluate's format, with both heads' columns.
    rows = read_predictions(out / "oof" / "predictions.csv")
    assert sorted(r["image_id"] for r in rows) == sorted(i for ids in subsets.values()
                                                          for i in ids)
    assert {"dice", "predicted_class", "prob_malignant"} <= set(rows[0])
    metrics = json.loads((out / "oof" / "metrics.json").read_text())
    assert metrics["task"] == "multitask" and metrics["n_images"] == len(rows)

    summary = json.loads((out / "cv_summary.json").read_text())
    assert list(summary["folds"]) == ["fold0", "fold1", "fold2"]
    name = summary["select_metric"]
    values = [summary["folds"][f]["metrics"][name] for f in summary["folds"]]
    assert summary["mean_sd"][name]["mean"] == pytest.approx(statistics.fmean(values))
    assert summary["mean_sd"][name]["sd"] == pytest.approx(statistics.stdev(values))

    # compare reads the pooled table beside an evaluate table of the same images.
    capsys.readouterr()
    assert main(["compare", str(out / "oof"), str(out / "oof")]) == 0

    # A second run into the folder is refused; --resume keeps the finished folds.
    assert main(args) == 2
    before = (out / "fold0" / "best.pt").stat().st_mtime_ns
    assert main([*args, "--resume"]) == 0
    assert (out / "fold0" / "best.pt").stat().st_mtime_ns == before


def test_folds_all_needs_a_k_fold_split(folds, tmp_path, capsys):
    data, _, recipe = folds
    plain = tmp_path / "plain.json"
    from sonocad.data.split import make_split

    write_split(plain, make_split(open_dataset(data), [], fractions=(0.5, 0.25, 0.25), seed=0))
    assert main(["train", str(recipe), "--data", str(data), "--split", str(plain), "--out",
                 str(tmp_path / "cv"), "--folds", "all"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no K folds" in err[0] and "--folds 5" in err[0]
    with pytest.raises(InputError):
        from sonocad.workflows.cross_validation import fold_names

        fold_names(plain)
