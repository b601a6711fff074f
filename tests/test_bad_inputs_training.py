"""Bad inputs to training and bad models, made at test time (issue 28 items 10, 11, 21).

A diverging run stops with one line naming the step and never saves a model made of NaN; what
it wrote before stays valid. A checkpoint with non-finite weights is refused when loaded,
naming it; an image whose model output is not finite gets a one-line skip, never a confident
call, and the batch carries on (both back ends). ``--resume`` with a recipe that differs from
the run's is refused, naming each key, and leaves the run byte for byte as it was.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image as PILImage

from conftest import (
    EXIT_FATAL,
    EXIT_SOME_FAILED,
    SEG_CLASSES,
    UNET_ARGS,
    checkpoint_meta,
    png,
    training_inputs,
    tree_digest,
    write_checkpoint,
)
from sonocad.checkpoint import Checkpoint, load_checkpoint, non_finite_weights, save_checkpoint
from sonocad.cli import main
from sonocad.inference.export import export_onnx
from sonocad.inference.predictor import NonFiniteOutput, Predictor
from sonocad.models import create_model
from sonocad.tasks import get_task

# 6 training images in batches of 2: 3 steps an epoch, last.pt after every step.
TINY_RECIPE = """\
task: segmentation
model: {name: unet, args: {base_width: 8, depth: 2, norm: group}}
transform: {input_size: 32, normalize: zscore, keep_aspect: false}
loss: {name: bce_dice}
optimizer: {name: adamw, lr: 0.003}
scheduler: {name: cosine}
train: {batch_size: 2, epochs: 3, checkpoint_every: 1, select_metric: dice, eval_batch_size: 8}
"""
_PROGRESS = re.compile(r"^sonocad: training step ")  # the run's progress lines off a terminal


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return training_inputs(tmp_path_factory.mktemp("phantoms"), TINY_RECIPE, 4, (48, 48), seed=3)


def _train(phantoms: tuple[Path, Path, Path], run: Path, *extra: str) -> list[str]:
    data, split, recipe = phantoms
    return ["train", str(recipe), "--data", str(data), "--split", str(split), "--out", str(run),
            *extra]


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """Exit code and stderr's lines less training progress; never a traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip() and not _PROGRESS.match(line)]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


# --- item 10: a diverging run stops at once and ships nothing made of NaN ---------------------

def _loss_goes(value: float, from_step: int) -> Callable[[pytest.MonkeyPatch], None]:
    """The segmentation loss times `value` from the `from_step`th training step on."""
    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        task = get_task("segmentation")
        build = task.build_loss

        def build_loss(config):
            loss_fn, calls = build(config), []

            def loss(outputs, target):
                result = loss_fn(outputs, target)
                if torch.is_grad_enabled():  # a training step, not validation
                    calls.append(1)
                    if len(calls) >= from_step:
                        return result * value
                return result
            return loss
        monkeypatch.setattr(task, "build_loss", build_loss)
    return patch


def _no_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    pass


# kind -> (overrides, what breaks the training, the step and cause the line names)
DIVERGING = {
    "lr_1e9": (["optimizer.lr=1e9"], _no_patch,
               r"at step 2: the loss is nan; lower optimizer\.lr \(now 1e\+09\) or set "
               r"train\.grad_clip"),
    # one step an epoch: validated after step 1, whose weights are finite but overflow
    "lr_1e9_validated": (["optimizer.lr=1e9", "train.batch_size=6"], _no_patch,
                         r"at step 1: the model's output on validation images is not "
                         r"finite \(nan\)"),
    "lr_1e9_clipped": (["optimizer.lr=1e9", "train.grad_clip=1.0"], _no_patch,
                       r"at step \d: .*train\.grad_clip \(now 1\)"),
    # the first step's update makes every weight inf or nan; last.pt is not written with them
    "lr_inf": (["optimizer.lr=.inf"], _no_patch,
               r"at step 1: the weights are not finite \(36 of 36 tensors hold inf or nan, e\.g\. "
               r"stem\.0\.weight\); lower optimizer\.lr \(now inf\)"),
    "loss_inf_at_step_5": ([], _loss_goes(float("inf"), 5), r"at step 5: the loss is inf"),
    "loss_nan_at_step_5": ([], _loss_goes(float("nan"), 5), r"at step 5: the loss is nan"),
}


@pytest.mark.parametrize("kind", DIVERGING)
def test_divergent_training_stops_with_one_line_naming_the_step(
        kind: str, phantoms: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    overrides, breaks, expected = DIVERGING[kind]
    inputs = tree_digest(phantoms[0].parent)
    breaks(monkeypatch)
    run = tmp_path / "run"
    code, lines = _run(_train(phantoms, run, *overrides), capsys)
    assert code == EXIT_FATAL and len(lines) == 1, lines
    assert re.search(f"^sonocad: error: training diverged {expected}", lines[0]), lines[0]
    assert lines[0].endswith("and train again with --overwrite")
    assert not (run / "summary.json").exists()
    for saved in run.glob("*.pt"):  # whatever was saved is a model made of numbers
        assert non_finite_weights(load_checkpoint(saved).state_dict) is None, saved.name
    assert tree_digest(phantoms[0].parent) == inputs


@pytest.mark.parametrize("kind", ["loss_inf_at_step_5", "loss_nan_at_step_5"])
def test_what_a_diverged_run_wrote_before_stays_valid_and_resumes(
        kind: str, phantoms: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    with monkeypatch.context() as patched:
        DIVERGING[kind][1](patched)
        code, _ = _run(_train(phantoms, run), capsys)
    assert code == EXIT_FATAL
    # epoch 1 (steps 1-3) validated, step 4 saved; step 5 diverged and left them alone
    assert [row["step"] for row in _rows(run)] == ["3"]
    assert load_checkpoint(run / "best.pt").meta["step"] == 3
    assert load_checkpoint(run / "last.pt").training_state["progress"]["step"] == 4
    code, lines = _run(_train(phantoms, run, "--resume"), capsys)  # the same recipe goes on
    assert code == 0 and lines == [], lines
    assert [row["step"] for row in _rows(run)] == ["3", "6", "9"]


def test_a_validation_that_scores_nan_never_beats_one_that_scored_a_number() -> None:
    from types import SimpleNamespace

    from sonocad.engine.trainer import _Trainer

    nan = float("nan")
    for sign, better, worse in ((1.0, 0.8, 0.2), (-1.0, 0.2, 0.8)):
        trainer = SimpleNamespace(select_sign=sign)
        improves = _Trainer._improves.__get__(trainer)
        assert improves(nan, None)  # the first validation is the best so far, whatever it is
        assert improves(worse, nan) and not improves(nan, worse)
        assert improves(better, worse) and not improves(worse, better)


# --- item 11: non-finite models give no call --------------------------------------------------

def _unet_state(damage: Callable[[dict[str, torch.Tensor]], None]) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    state = create_model("unet", **UNET_ARGS).state_dict()
    with torch.no_grad():
        damage(state)
    return state


def _every_float(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def damage(state: dict[str, torch.Tensor]) -> None:
        for tensor in state.values():
            if tensor.is_floating_point():
                tensor.fill_(value)
    return damage


def _one(name: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def damage(state: dict[str, torch.Tensor]) -> None:
        state[name].view(-1)[0] = value
    return damage


def _overflowing(state: dict[str, torch.Tensor]) -> None:
    """Finite weights so large that any texture overflows to inf (then NaN) in the first
    convolution; a flat grey image normalises to zeros and stays finite."""
    state["stem.0.weight"].fill_(1e38)


def _checkpoint(path: Path, damage: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    return write_checkpoint(path, "segmentation", "unet", UNET_ARGS, SEG_CLASSES,
                            _unet_state(damage))


def _default_model_with_nan(path: Path) -> Path:
    """The bundled default model (the red team's case: "normal", not low confidence) with NaN
    in every float tensor."""
    from importlib.resources import files

    default = load_checkpoint(Path(str(files("sonocad").joinpath("weights", "default.pt"))))
    with torch.no_grad():
        _every_float(float("nan"))(default.state_dict)
    save_checkpoint(path, default)
    return path


# kind -> (back end, the damaged checkpoint, the "hold ..." the line names)
DAMAGED_WEIGHTS = {
    "nan_everywhere_torch": ("torch", lambda p: _checkpoint(p, _every_float(float("nan"))),
                             "nan"),
    "nan_everywhere_onnx": ("onnx", lambda p: _checkpoint(p, _every_float(float("nan"))),
                            "nan"),
    "inf_in_head_bias": ("torch", lambda p: _checkpoint(p, _one("head.bias", float("inf"))),
                         "inf"),
    "minus_inf_in_a_weight_onnx": ("onnx", lambda p: _checkpoint(
        p, _one("stem.0.weight", float("-inf"))), "inf"),
    "nan_in_a_norm_buffer": ("torch", lambda p: _checkpoint(p, _one("stem.1.running_var",
                                                                   float("nan"))), "nan"),
    "default_model_nan": ("torch", _default_model_with_nan, "nan"),
}


@pytest.mark.parametrize("kind", DAMAGED_WEIGHTS)
def test_a_checkpoint_with_non_finite_weights_is_refused_when_loaded(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    backend, make, held = DAMAGED_WEIGHTS[kind]
    checkpoint = make(tmp_path / "damaged.pt")
    images = tmp_path / "images"
    png(images / "a.png", seed=1)
    before = tree_digest(tmp_path)
    code, lines = _run(["predict", checkpoint, images, "--out", tmp_path / "out", "--backend",
                        backend], capsys)
    assert code == EXIT_FATAL and len(lines) == 1, lines
    assert lines[0].startswith(f"sonocad: error: {checkpoint}: its weights are not finite ("), \
        lines[0]
    assert re.search(rf"\d+ of \d+ tensors hold {held}", lines[0]), lines[0]
    assert not (tmp_path / "out" / "predictions.csv").exists()
    assert {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith("out/")} \
        == before


def _onnx_file_with_nan(path: Path) -> Path:
    """A `sonocad export` of a sound model whose stored weights were then overwritten with NaN
    (a damaged file: no checkpoint to check when it is loaded)."""
    exported = export_onnx(_checkpoint(path.with_suffix(".pt"), lambda state: None))
    model = onnx.load(str(exported))
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype.kind == "f":
            initializer.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan),
                                                         initializer.name))
    onnx.save(model, str(path))
    return path


# kind -> (back end, the model, which of the two images [flat grey, textured] get no call)
NON_FINITE_OUTPUTS = {
    "overflow_torch": ("torch", lambda p: _checkpoint(p, _overflowing), ["b_texture.png"]),
    "overflow_onnx": ("onnx", lambda p: _checkpoint(p, _overflowing), ["b_texture.png"]),
    "onnx_file_with_nan_weights": ("onnx", lambda p: _onnx_file_with_nan(p.with_suffix(".onnx")),
                                   ["a_flat.png", "b_texture.png"]),
}


@pytest.mark.parametrize("kind", NON_FINITE_OUTPUTS)
def test_an_image_whose_output_is_not_finite_is_skipped_and_the_batch_carries_on(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    backend, make, refused = NON_FINITE_OUTPUTS[kind]
    model = make(tmp_path / "model.pt")
    images = tmp_path / "images"
    images.mkdir()
    PILImage.fromarray(np.full((40, 56), 90, np.uint8)).save(images / "a_flat.png")
    png(images / "b_texture.png", seed=2)
    before = tree_digest(tmp_path)
    out = tmp_path / "out"
    code, lines = _run(["predict", model, images, "--out", out, "--backend", backend], capsys)
    assert code == EXIT_SOME_FAILED
    skipped = [line for line in lines if line.startswith("sonocad: skipped ")]
    assert len(skipped) == len(refused), lines
    for line, name in zip(skipped, refused):
        assert line == (f"sonocad: skipped {images / name}: the model's output is not finite "
                        "(nan), so no call is made; a model that does this on every image has "
                        "damaged weights"), line
    with open(out / "predictions.csv") as handle:
        predicted = [row["image_id"] for row in csv.DictReader(handle)]
    assert predicted == [n for n in ("a_flat.png", "b_texture.png") if n not in refused]
    assert sorted(p.name for p in (out / "masks").glob("*.png")) == \
        [f"{Path(n).stem}.png" for n in predicted]
    assert {k: v for k, v in tree_digest(tmp_path).items() if not k.startswith("out/")} \
        == before


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_predictor_never_makes_a_call_of_a_non_finite_output(backend: str) -> None:
    predictor = Predictor(Checkpoint(checkpoint_meta("segmentation", "unet", UNET_ARGS,
                                                     SEG_CLASSES),
                                     _unet_state(_overflowing)), backend=backend)
    flat = np.full((40, 56), 90, np.uint8)
    texture = np.random.default_rng(0).integers(0, 255, (40, 56), dtype=np.uint8)
    first, second, third = predictor.predict_each([flat, texture, flat])
    assert isinstance(second, NonFiniteOutput) and "(nan)" in str(second)
    for prediction in (first, third):
        assert np.isfinite(prediction.lesion_probability).all()
    with pytest.raises(NonFiniteOutput):
        predictor.predict([flat, texture])
    assert len(predictor.predict([flat])) == 1


# --- item 21: --resume keeps the run's recipe --------------------------------------------------

@pytest.fixture(scope="module")
def stopped_run(phantoms: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory
                ) -> Path:
    """A run stopped after 2 of its 9 steps (max_steps=2), to be resumed."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    assert main(_train(phantoms, run, "max_steps=2")) == 0
    return run


# kind -> (overrides on resume, what the line names)
CHANGED = {
    "input_size_and_lr": (["transform.input_size=48", "optimizer.lr=0.5"],
                          "transform.input_size (48, was 32), optimizer.lr (0.5, was 0.003)"),
    "model_width": (["model.args.base_width=16"], "model.args.base_width (16, was 8)"),
    "model_depth": (["model.args.depth=3"], "model.args.depth (3, was 2)"),
    "normalisation": (["transform.normalize=unit"],
                      'transform.normalize ("unit", was "zscore")'),
    "augmentation_added": (["transform.augment={hflip: {p: 0.5}}"],
                           "transform.augment.hflip.p (0.5, was absent)"),
    "loss": (["loss.name=dice"], 'loss.name ("dice", was "bce_dice")'),
    "optimizer": (["optimizer.name=sgd"], 'optimizer.name ("sgd", was "adamw")'),
    "scheduler": (["scheduler.name=none"], 'scheduler.name ("none", was "cosine")'),
    "batch_size": (["train.batch_size=3"], "train.batch_size (3, was 2)"),
    "seed": (["train.seed=1"], "train.seed (1, was 0)"),
    "data_limit": (["data.limit=4"], "data.limit (4, was null)"),
    "length_with_another_key": (["max_steps=4", "train.grad_clip=1.0"],
                                "train.grad_clip (1.0, was null)"),
}


@pytest.mark.parametrize("kind", CHANGED)
def test_resume_with_a_changed_recipe_is_refused_naming_the_keys(
        kind: str, phantoms: tuple[Path, Path, Path], stopped_run: Path,
        capsys: pytest.CaptureFixture) -> None:
    overrides, named = CHANGED[kind]
    before = tree_digest(stopped_run)
    code, lines = _run(_train(phantoms, stopped_run, "--resume", "max_steps=2", *overrides),
                       capsys)
    assert code == EXIT_FATAL and len(lines) == 1, lines
    assert lines[0] == (f"sonocad: error: {stopped_run / 'last.pt'}: the recipe differs from "
                        f"the run's in {named}; resume with the run's recipe "
                        f"({stopped_run / 'recipe.yaml'}) or train a new run"), lines[0]
    assert tree_digest(stopped_run) == before  # recipe.yaml, last.pt, metrics.csv untouched


# The run's cosine was built for 2 steps: loaded as it was it would be back at half the lr at
# step 3 and at the full lr at step 4; rebuilt for the new length it ends at 0.
@pytest.mark.parametrize("overrides", [["max_steps=4"], ["epochs=1", "max_steps=null"],
                                       ["max_steps=4", "eval_batch_size=4", "checkpoint_every=2",
                                        "early_stopping=5"]],
                         ids=["max_steps", "epochs", "length_and_how_it_runs"])
def test_resume_may_change_how_long_the_run_goes_and_the_schedule_follows(
        overrides: list[str], phantoms: tuple[Path, Path, Path], stopped_run: Path,
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    code, lines = _run(_train(phantoms, run, "--resume", *overrides), capsys)
    assert code == 0 and lines == [], lines
    rows = _rows(run)
    assert [row["step"] for row in rows][0] == "2" and len(rows) >= 2
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-12)
    assert load_checkpoint(run / "last.pt").meta["recipe"]["train"]["max_steps"] == \
        (None if "max_steps=null" in overrides else 4)
