"""Adapting the bundled model to new images: `train --init`, a frozen encoder, replay of the
original data, the decision refitted on the new validation images, and the origin recorded."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch

from sonocad.checkpoint import bundled_checkpoint, load_checkpoint
from sonocad.cli import main
from sonocad.data.adapters import open_dataset
from sonocad.data.phantom import write_phantom_dataset
from sonocad.data.split import make_split, write_split
from sonocad.predictions import read_predictions
from sonocad.report.card import generated_card
from sonocad.report.sources import Run

FINETUNE = """\
task: multitask
model: {{name: ensemble, init: default, args: {{members: [{{name: efficientnet_lite0_unet}},
                                                         {{name: efficientnet_lite0_unet}}]}}}}
data: {{classes: [normal, benign, malignant]{replay}}}
transform: {{input_size: 64, normalize: imagenet, keep_aspect: true}}
loss: {{name: bce_dice, classification: {{weight: 0.5}}}}
optimizer: {{name: adamw, lr: {lr}}}
train: {{batch_size: 4, epochs: {epochs}, max_steps: {steps}, freeze_encoder_epochs: {freeze}}}
"""


def _dataset(root: Path, seed: int) -> tuple[Path, Path]:
    data = root / f"data{seed}"
    write_phantom_dataset(data, per_class=4, size=(64, 80), seed=seed)
    split = root / f"split{seed}.json"
    write_split(split, make_split(open_dataset(data), [], fractions=(0.5, 0.25, 0.25), seed=0))
    return data, split


def _train(tmp_path: Path, name: str, *, lr: float = 1e-3, epochs: int = 1, steps: int = 2,
           freeze: int = 0, replay: str = "", extra: list[str] = ()) -> Path:
    data, split = _dataset(tmp_path, 5)
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(FINETUNE.format(lr=lr, epochs=epochs, steps=steps, freeze=freeze,
                                      replay=replay))
    run = tmp_path / name
    assert main(["train", str(recipe), "--data", str(data), "--split", str(split), "--out",
                 str(run), *extra]) == 0
    return run


def _same_weights(state: dict[str, torch.Tensor], other: dict[str, torch.Tensor],
                  prefix: str = "", buffers: bool = True, atol: float = 0.0) -> bool:
    return all(torch.allclose(state[key].float(), other[key].float(), rtol=0, atol=atol)
               for key in state if key.startswith(prefix)
               and (buffers or not key.endswith(("running_mean", "running_var",
                                                 "num_batches_tracked"))))


def test_training_starts_from_the_bundled_weights_and_records_where_it_came_from(tmp_path):
    run = _train(tmp_path, "still", lr=1e-12)  # next to nothing learnt: the bundle's weights
    tuned, bundled = load_checkpoint(run / "best.pt"), bundled_checkpoint()
    # (batch-norm statistics follow the new images whatever the learning rate)
    assert _same_weights(tuned.state_dict, bundled.state_dict, buffers=False, atol=1e-6)
    assert tuned.meta["init"]["from"] == "default"
    assert {s["name"] for s in tuned.meta["init"]["sources"]} == {"busi", "busbra"}
    assert "decision" in tuned.meta  # refitted on the new validation images
    assert "validation subsets of data5" in tuned.meta["decision"]["chosen_on"]
    card = str(generated_card(Run(run, run / "eval", tuned, [], {}, {}, [])))
    assert "Adapted from" in card and "the bundled default model" in card
    assert main(["predict", str(run / "best.pt"), str(tmp_path / "data5"), "--out",
                 str(tmp_path / "pred"), "--outputs", "table"]) == 0
    rows = read_predictions(tmp_path / "pred" / "predictions.csv")
    assert rows and all(row["final_class"] for row in rows)


def test_a_frozen_encoder_learns_nothing_while_the_heads_learn(tmp_path):
    run = _train(tmp_path, "frozen", freeze=1)
    tuned, bundled = load_checkpoint(run / "last.pt"), bundled_checkpoint()
    for member in ("members.0.", "members.1."):
        for prefix in ("_conv_stem", "_bn0", "_blocks"):  # weights and batch-norm statistics
            assert _same_weights(tuned.state_dict, bundled.state_dict, member + prefix)
        assert not _same_weights(tuned.state_dict, bundled.state_dict, member + "decoder")


def test_replay_sources_are_trained_on_but_never_validated_on(tmp_path):
    old, old_split = _dataset(tmp_path, 9)
    replay = (f", replay: [{{name: old, path: '{old}', split: '{old_split}', weight: 0.5}}]")
    run = _train(tmp_path, "replayed", replay=replay)
    sources = {s["name"]: s for s in load_checkpoint(run / "best.pt").meta["data"]["sources"]}
    assert sources["old"]["replay"] is True and sources["old"]["n_val"] == 0
    assert sources["old"]["n_train"] > 0 and "replay" not in sources["data5"]
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_a_checkpoint_with_other_classes_is_one_line(tmp_path, capsys):
    data, split = _dataset(tmp_path, 5)
    recipe = tmp_path / "other.yaml"
    recipe.write_text(FINETUNE.format(lr=1e-3, epochs=1, steps=1, freeze=0,
                                      replay=", labels: [benign, malignant]"))
    code = main(["train", str(recipe), "--data", str(data), "--split", str(split), "--out",
                 str(tmp_path / "run")])
    message = capsys.readouterr().err.strip()
    assert code != 0 and len(message.splitlines()) == 1
    assert "--init the bundled default model: its classes" in message


def test_a_model_without_a_named_encoder_cannot_be_frozen(tmp_path, capsys):
    data, split = _dataset(tmp_path, 5)
    recipe = tmp_path / "unet.yaml"
    recipe.write_text("task: segmentation\n"
                      "model: {name: unet, args: {base_width: 8, depth: 2}}\n"
                      "transform: {input_size: 64}\n"
                      "train: {batch_size: 4, max_steps: 1, freeze_encoder_epochs: 1}\n")
    code = main(["train", str(recipe), "--data", str(data), "--split", str(split), "--out",
                 str(tmp_path / "run")])
    assert code != 0 and "does not name its encoder" in capsys.readouterr().err


def test_the_adapting_page_runs_end_to_end_with_tiny_steps(tmp_path, monkeypatch):
    """Every `sonocad` command of docs/adapting.md's shell block, in order, on phantoms: the
    page's own words, with only the data folder named and the training cut short."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "adapting.md").read_text()
    block = page.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [shlex.split(line) for line in block.splitlines() if line.startswith("sonocad ")]
    assert [c[1] for c in commands] == ["data", "data", "evaluate", "train", "evaluate",
                                        "compare"]
    write_phantom_dataset(tmp_path / "ours", per_class=10, size=(64, 80), seed=3)
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "finetune.yaml"
    monkeypatch.chdir(tmp_path)
    for command in commands:
        arguments = [str(recipe) if a == "recipes/finetune.yaml" else a for a in command[1:]]
        if arguments[0] == "train":  # tiny: two steps at 64 px, no replay data here
            arguments += ["train.max_steps=2", "train.epochs=1", "transform.input_size=64",
                          "train.batch_size=4", "data.replay=null"]
        assert main(arguments) == 0, command
    assert (tmp_path / "adapted" / "best.pt").is_file()
