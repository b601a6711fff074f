"""The trainer end to end on phantoms: checkpoints, evaluation, resume after SIGKILL, DDP."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_UNET_RECIPE, training_inputs
from sonocad.checkpoint import load_checkpoint
from sonocad.cli import main
from sonocad.data.split import read_split
from sonocad.engine.trainer import STEP_FIELDS, _steps_up_to, _validations_left


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> tuple[Path, Path, Path]:
    return training_inputs(tmp_path_factory.mktemp("phantoms"), TINY_UNET_RECIPE, 6, (64, 64),
                           seed=3)


def _train_args(phantoms, out: Path, *extra: str) -> list[str]:
    data, split, recipe = phantoms
    return ["train", str(recipe), "--data", str(data), "--split", str(split), "--out", str(out),
            *extra]


def _cli(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "sonocad.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_train_writes_a_self_describing_checkpoint_and_evaluate_reads_it(phantoms, tmp_path):
    data, split, _ = phantoms
    run = tmp_path / "run"
    assert main(_train_args(phantoms, run)) == 0
    for name in ("recipe.yaml", "metrics.csv", "best.pt", "last.pt", "summary.json"):
        assert (run / name).is_file(), name
    checkpoint = load_checkpoint(run / "best.pt")
    meta = checkpoint.meta
    assert meta["model"] == {"name": "unet", "args": {"base_width": 8, "depth": 2,
                                                      "norm": "group"}}
    assert meta["task"] == "segmentation" and meta["transform"]["input_size"] == 32
    subsets = read_split(split).subsets
    assert meta["data"]["n_train"] == len(subsets["train"]) == 10
    assert len(meta["data"]["fingerprint"]) == 64
    assert meta["sonocad_version"]
    assert meta["recipe"]["optimizer"]["lr"] == 0.003
    # best.pt: weights and metadata only; the optimiser state stays in last.pt
    assert checkpoint.training_state is None
    assert "optimizer" in load_checkpoint(run / "last.pt").training_state
    with open(run / "metrics.csv") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 4  # one validation per epoch
    # steps.csv: every optimiser step, with the rate it used; its epochs end where metrics.csv's
    steps = _steps_rows(run)
    assert [int(row["step"]) for row in steps] == list(range(1, 9))  # 10 images, 2 batches of 4
    assert [int(row["epoch"]) for row in steps] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert float(steps[0]["lr"]) == 0.003 > float(steps[-1]["lr"])  # the cosine schedule
    assert float(history[0]["train_loss"]) == pytest.approx(
        sum(float(row["loss"]) for row in steps[:2]) / 2)
    # best.pt holds the validation figures of the epoch with the best Dice
    assert meta["metrics"]["dice"] == pytest.approx(max(float(r["val_dice"]) for r in history))

    assert main(["evaluate", str(run / "best.pt"), "--data", str(data), "--split",
                 f"{split}:test", "--out", str(tmp_path / "eval"), "--overlays", "2"]) == 0
    with open(tmp_path / "eval" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(subsets["test"])
    assert {"dice", "iou", "hd95_px", "lesion_area_px"} <= set(rows[0])
    assert len(list((tmp_path / "eval" / "overlays").glob("*.png"))) == 2


# The default model's kind: dropout draws from the global RNG, which resuming must replay.
# 10 training images in batches of 2: 5 steps an epoch, last.pt after each; the validation
# loss falls every epoch, so best.pt is written at every validation.
TINY_MULTITASK = """\
task: multitask
model: {name: efficientnet_lite0_unet, args: {dropout: 0.5}}
data: {classes: [normal, benign, malignant]}
transform:
  input_size: 32
  normalize: zscore
  keep_aspect: false
  augment: {hflip: {p: 0.5}, rotation: {degrees: 10, p: 0.5}, brightness: {p: 0.5}}
loss: {name: bce_dice, classification: {weight: 0.5}}
optimizer: {name: adamw, lr: 0.003}
scheduler: {name: cosine}
train: {batch_size: 2, epochs: 3, checkpoint_every: 1, select_metric: loss, select_mode: min,
        eval_batch_size: 8}
"""

# Imported at start-up of a Python run with this folder on PYTHONPATH: the Nth call of a
# _Trainer method, once it has returned, SIGKILLs the process (a kill at an exact point).
KILL_HOOK = """\
import os
import signal

from sonocad.engine.trainer import _Trainer

_method, _calls = os.environ["SONOCAD_TEST_KILL_AFTER"].split(":")
_original, _seen = getattr(_Trainer, _method), []


def _then_die(self, *args, **kwargs):
    result = _original(self, *args, **kwargs)
    _seen.append(1)
    if len(_seen) == int(_calls):
        os.kill(os.getpid(), signal.SIGKILL)
    return result


setattr(_Trainer, _method, _then_die)
"""

# One run killed four times, each resumed run after its own Nth call.
KILLS = [("_save_last", 2),  # after step 2: mid-epoch 1
         ("_save_last", 3),  # steps 3-5: right after epoch 1's validated checkpoint
         ("_save_last", 2),  # step 7: mid-epoch 2
         ("_validate", 1)]   # step 10 validated (metrics.csv, best.pt), last.pt still at step 9
KILLED_AT = [(2, 2), (5, 0), (7, 2), (9, 4)]  # (step, batch within the epoch) in last.pt


def test_training_killed_anywhere_resumes_to_the_same_bits(phantoms, tmp_path):
    data, split, _ = phantoms
    recipe = tmp_path / "multitask.yaml"
    recipe.write_text(TINY_MULTITASK)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(KILL_HOOK)
    args = (data, split, recipe)
    cpu = {"CUDA_VISIBLE_DEVICES": ""}  # bit for bit is a CPU promise: GPU kernels may not be
    straight = _cli(_train_args(args, tmp_path / "straight"), env=cpu)  # alongside the others

    killed = tmp_path / "killed"
    positions = []
    for n, (method, calls) in enumerate(KILLS):
        env = {**cpu, "SONOCAD_TEST_KILL_AFTER": f"{method}:{calls}",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(hook),
                                                           os.environ.get("PYTHONPATH")]))}
        victim = _cli(_train_args(args, killed, *(["--resume"] if n else [])), env=env)
        _, stderr = victim.communicate(timeout=300)
        assert victim.returncode == -signal.SIGKILL, stderr
        progress = load_checkpoint(killed / "last.pt").training_state["progress"]
        positions.append((progress["step"], progress["batch"]))
    assert positions == KILLED_AT

    resumed = _cli(_train_args(args, killed, "--resume"), env=cpu)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    for name in ("last.pt", "best.pt"):
        expected = load_checkpoint(tmp_path / "straight" / name)
        actual = load_checkpoint(killed / name)
        assert actual.meta["step"] == expected.meta["step"], name
        assert actual.meta["metrics"] == expected.meta["metrics"], name
        assert actual.state_dict.keys() == expected.state_dict.keys()
        unequal = [key for key, tensor in expected.state_dict.items()
                   if not torch.equal(actual.state_dict[key], tensor)]
        assert not unequal, f"{name}: {len(unequal)} tensors differ, e.g. {unequal[:3]}"
    assert _metrics_rows(killed) == _metrics_rows(tmp_path / "straight")
    # Step 10, logged after last.pt (the fourth kill), was cut and taken again: none twice,
    # none lost.
    assert _steps_rows(killed) == _steps_rows(tmp_path / "straight")
    assert _summary(killed) == _summary(tmp_path / "straight")


def _metrics_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv as written, less the wall-clock column."""
    with open(run / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k != "seconds"}
                for row in csv.DictReader(handle)]


def _steps_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "steps.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == ("step", "epoch", "loss", "lr")
        return list(reader)


def test_resuming_keeps_the_logged_steps_up_to_the_checkpoint_and_no_torn_row(
        tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    path.write_text(",".join(STEP_FIELDS) + "\n" + "".join(
        f"{step},1,0.5,0.001\n" for step in range(1, 6)) + "6,2,0.4")  # killed mid-row
    assert [row[0] for row in _steps_up_to(path, 3)] == ["1", "2", "3"]
    assert [row[0] for row in _steps_up_to(path, 9)] == ["1", "2", "3", "4", "5"]
    assert _steps_up_to(tmp_path / "none.csv", 3) == []


def test_the_time_left_counts_every_validation_still_to_come() -> None:
    # 5 steps an epoch, 20 in all: validations after steps 5, 10, 15 and 20.
    assert [_validations_left(step, 20, 5) for step in (0, 1, 5, 6, 19, 20)] == [
        4, 4, 4, 3, 1, 1]
    # max_steps=12 stops mid-epoch, and validates there: after steps 5, 10 and 12.
    assert [_validations_left(step, 12, 5) for step in (1, 10, 11)] == [3, 2, 1]


def _summary(run: Path) -> dict:
    """summary.json less the wall-clock minutes."""
    summary = json.loads((run / "summary.json").read_text())
    return {k: v for k, v in summary.items() if k != "minutes"}


def _train_losses(run: Path) -> list[float]:
    with open(run / "metrics.csv") as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]


def test_ddp_with_two_processes_matches_one_process(phantoms, tmp_path):
    one = _cli(_train_args(phantoms, tmp_path / "one"))
    assert one.wait(timeout=300) == 0, one.stderr.read()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "sonocad.cli", *_train_args(phantoms, tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    expected, actual = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert len(actual) == len(expected) == 4
    assert actual == pytest.approx(expected, rel=1e-4)
    # One process writes steps.csv: each global step once.
    assert [row["step"] for row in _steps_rows(tmp_path / "two")] == [
        row["step"] for row in _steps_rows(tmp_path / "one")]
    one_weights = load_checkpoint(tmp_path / "one" / "last.pt").state_dict
    two_weights = load_checkpoint(tmp_path / "two" / "last.pt").state_dict
    # All-reduce sums the two halves' gradients in another order than one process does; AdamW
    # divides by the gradients' running RMS, which lifts those last-bit differences of tiny
    # gradients to ~2e-5 after 8 steps on some CPUs. A wrong shard moves weights by ~1e-2.
    for name, tensor in one_weights.items():
        torch.testing.assert_close(two_weights[name], tensor, rtol=1e-4, atol=1e-4, msg=name)
