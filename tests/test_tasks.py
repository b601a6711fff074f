"""Tasks are objects in one registry: a fifth task, defined here and nowhere in sonocad, trains,
evaluates and predicts through the ordinary commands; a predict table joins an evaluate table."""

from __future__ import annotations

from pathlib import Path

import pytest

import sonocad
from conftest import phantom_dataset
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.split import SplitFile, write_split
from sonocad.engine.recipe import load_recipe
from sonocad.errors import InputError
from sonocad.predictions import read_predictions
from sonocad.tasks import get_task, registry
from sonocad.tasks.classification import ClassificationTask

RECIPE = """\
task: {task}
model: {{name: {model}}}
data: {{classes: [normal, benign, malignant]}}
transform: {{input_size: 32, normalize: imagenet, keep_aspect: false}}
optimizer: {{name: adamw, lr: 0.003}}
train: {{batch_size: 4, epochs: 1, max_steps: 2, eval_batch_size: 8}}
"""


class MacroF1Classification(ClassificationTask):
    """A fifth task: classification that selects on macro-F1 (BUSI's classes are unbalanced)."""

    name = "classification_f1"
    select_metric = "macro_f1"

    def accepts_model(self, model_task: str) -> bool:
        return model_task == "classification"


@pytest.fixture
def fifth_task(monkeypatch: pytest.MonkeyPatch) -> MacroF1Classification:
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))  # unregistered afterwards
    return registry.register_task(MacroF1Classification())


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return phantom_dataset(tmp_path_factory.mktemp("tasks"), 4, (48, 48), seed=3)


def test_a_fifth_task_trains_evaluates_and_predicts(fifth_task, phantoms, tmp_path) -> None:
    data, split = phantoms
    recipe = tmp_path / "f1.yaml"
    recipe.write_text(RECIPE.format(task=fifth_task.name, model="resnet34"))
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--data", str(data), "--split", str(split),
                 "--out", str(run)]) == 0
    assert '"select_metric": "macro_f1"' in (run / "summary.json").read_text()
    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--split",
                 f"{split}:test", "--out", str(tmp_path / "eval")]) == 0
    rows = read_predictions(tmp_path / "eval" / "predictions.csv")
    assert rows and {"prob_malignant", "predicted_class", "correct"} <= set(rows[0])
    assert main(["predict", str(run / "best.pt"), str(data),
                 "--out", str(tmp_path / "pred")]) == 0
    predicted = read_predictions(tmp_path / "pred" / "predictions.csv")
    assert {row["predicted_class"] for row in predicted} <= {"normal", "benign", "malignant"}
    assert get_task(fifth_task.name) is fifth_task


def test_a_recipe_pairs_its_task_with_a_model_of_that_task(tmp_path) -> None:
    recipe = tmp_path / "odd.yaml"
    recipe.write_text(RECIPE.format(task="segmentation", model="resnet34"))
    with pytest.raises(InputError, match="'resnet34' is a classification model, not a "
                                         "segmentation one"):
        load_recipe(recipe)


def test_compare_joins_a_predict_table_with_an_evaluate_table(phantoms, tmp_path,
                                                             capsys) -> None:
    data, split = phantoms
    everything = tmp_path / "all.json"
    ids = sorted(sample.image_id for sample in open_dataset(data))
    write_split(everything, SplitFile(str(data), 0, "all", {"all": tuple(ids)}))
    bundled = Path(sonocad.__file__).parent / "weights" / "default.pt"
    assert main(["evaluate", str(bundled), "--data", str(data), "--split", f"{everything}:all",
                 "--out", str(tmp_path / "eval")]) == 0
    assert main(["predict", str(data), "--out", str(tmp_path / "pred")]) == 0
    predicted = read_predictions(tmp_path / "pred" / "predictions.csv")
    assert sorted(row["image_id"] for row in predicted) == sorted(ids)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "pred" / "predictions.csv"),
                 str(tmp_path / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed and f"{len(ids)}" in printed
    # Two predict tables hold no truth to compare against: one line, not empty tables.
    assert main(["compare", str(tmp_path / "pred"), str(tmp_path / "pred")]) != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "neither table holds the truth" in error[0]
