"""One trainer for every task: a recipe, a dataset and a split in; checkpoints and a log out.

Run layout (``--out RUN``):
  recipe.yaml    the recipe exactly as used (defaults filled, overrides applied)
  metrics.csv    one row per validation: epoch, step, train loss, validation metrics, lr
  steps.csv      one row per optimiser step: step, epoch (from 1), loss, lr (the step's own);
                 appended and flushed step by step, so a killed run keeps every step it took,
                 and ``--resume`` cuts the rows past last.pt's step before taking them again
  last.pt        everything ``--resume`` needs, written every ``checkpoint_every`` steps
                 (a run killed anywhere and resumed ends, on a CPU, bit for bit as one that
                 ran straight through: same weights, same steps.csv, same metrics.csv but
                 for ``seconds``)
  best.pt        the weights that scored best on the validation subset (never the test)
  summary.json   the selection metric, its value, steps, time

Divergence stops the run: a step whose loss is not finite, weights that are not finite when
the model is validated or saved, or outputs on validation images that are not (weights so large
that they overflow) end training with one line naming the step (`SonocadError`), so no model
that computes NaN is ever selected or saved; what the run wrote before (metrics.csv,
last.pt, best.pt) stays as it was. A validation whose selection metric is NaN never beats one
that scored a number.

``--resume`` continues a run with the recipe it started with: a recipe that differs is refused,
naming each differing key, and recipe.yaml is left alone. Only what sets how long the run goes
on and how it runs, never what it computes, may change: ``train.epochs``, ``train.max_steps``,
``train.max_minutes``, ``train.early_stopping``, ``train.checkpoint_every``,
``train.num_workers``, ``train.eval_batch_size``, ``train.tensorboard`` and ``description``.
Where a new length changes the number of steps, a per-step schedule (cosine, warmup_cosine) is
rebuilt for the new length and taken on from the step reached, so the learning rate ends where
the new length does (the run's own schedule, loaded as it was, would climb back up past its
end).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from sonocad.checkpoint import (
    Checkpoint,
    bundled_checkpoint,
    load_checkpoint,
    non_finite,
    non_finite_weights,
    save_checkpoint,
)
from sonocad.data.sample import Sample
from sonocad.data.sources import DataArg, Source, class_weights, resolve_sources
from sonocad.data.split import SplitFile, read_split, select
from sonocad.data.torch_dataset import EpochBatches, SampleDataset, collate, epoch_generator
from sonocad.data.views import ViewConfig
from sonocad.engine.distributed import World, barrier, close_world, init_world, mean_over_world
from sonocad.engine.optim import build_optimizer, build_scheduler, steps_per_optimizer_step
from sonocad.engine.recipe import (
    ABSENT,
    DEFAULTS,
    DataSection,
    Recipe,
    merge,
    recipe_changes,
)
from sonocad.engine.validation import validate
from sonocad.errors import SonocadError
from sonocad.io.atomic import atomic_open, write_json, write_text
from sonocad.io.outputs import check_output_dir, claim_output_dir
from sonocad.models import create_model
from sonocad.progress import RateLog, duration
from sonocad.tasks import get_task
from sonocad.transforms import build_transform


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    best_checkpoint: Path
    select_metric: str
    best_value: float
    steps: int


@dataclass
class _Progress:
    """What resuming needs besides weights and optimiser: where we were and how it went."""

    epoch: int = 0
    batch: int = 0  # next batch index within `epoch`
    step: int = 0
    best_value: float | None = None
    best_metrics: dict[str, float] | None = None
    bad_validations: int = 0
    elapsed_s: float = 0.0
    # This epoch's step losses so far: its logged train loss covers steps before a resume too.
    epoch_losses: list[float] = field(default_factory=list)
    # The latest validation's seconds: the time left counts one for each validation to come.
    validation_s: float | None = None


STEPS = "steps.csv"
STEP_FIELDS = ("step", "epoch", "loss", "lr")

# Recipe keys `--resume` may change: how long the run goes on and how it runs, never what it
# computes (see the module's docstring).
RESUMABLE_KEYS = frozenset({
    "description", "train.epochs", "train.max_steps", "train.max_minutes",
    "train.early_stopping", "train.checkpoint_every", "train.num_workers",
    "train.eval_batch_size", "train.tensorboard"})


def train(recipe: Recipe, data: DataArg, split: DataArg, out: str | Path, *,
          resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train the recipe's model; select on the validation subset; return the best checkpoint.

    `data` and `split`: one data set and its split, or one of each per source (see
    `sonocad.data.sources`); None takes the recipe's ``data.sources``. `out` must be new or
    empty, or an earlier run folder with `resume` (continue it) or `overwrite` (replace it)."""
    if resume and overwrite:
        raise SonocadError("--resume and --overwrite contradict each other: give one")
    sources = resolve_sources(recipe.data.sources, data, split, recipe.data.replay)
    # Refused at once, not after the data have loaded; `run` claims the folder.
    check_output_dir(out, "train", inputs=_inputs(sources), overwrite=overwrite, resume=resume)
    world = init_world()
    try:
        return _Trainer(recipe, sources, Path(out), world).run(resume, overwrite)
    finally:
        close_world(world)


class _Trainer:
    def __init__(self, recipe: Recipe, sources: list[Source], out: Path,
                 world: World) -> None:
        self.recipe, self.sources, self.out, self.world = recipe, sources, out, world
        self.task = get_task(recipe.task)
        self.cfg_train = recipe.train
        self.class_names = self.task.class_names(recipe.data.labels or recipe.data.classes)
        torch.manual_seed(self.cfg_train.seed)

        train_samples, val_samples, self.draws, self.data_info = _select_samples(
            recipe.data, sources)
        if world.is_main:
            print(f"training on {len(train_samples)} images, validating on {len(val_samples)}; "
                  f"expected draws per epoch: {self.data_info['epoch_composition']}", flush=True)
        self.transform_config = recipe.transform
        cache = recipe.data.cache
        for samples in (train_samples, val_samples):
            self.task.check_samples(samples, self.class_names)
        self.train_set = SampleDataset(train_samples, self.task, self.class_names,
                                       build_transform(self.transform_config, train=True),
                                       cache=cache, views=_views(recipe, self.class_names))
        self.val_set = SampleDataset(val_samples, self.task, self.class_names,
                                     build_transform(self.transform_config, train=False),
                                     cache=cache)

        spec = recipe.model
        self.model_args = {**spec.args, **self.task.head_args(self.class_names)}
        self.model: nn.Module = create_model(spec.name, pretrained=None if spec.init
                                             else spec.pretrained, **self.model_args)
        self.origin = (_initialise(self.model, spec.name, spec.init, self.class_names)
                       if spec.init else None)
        self.model.to(world.device)
        self.encoder = (_encoder(self.model, spec.name)
                        if self.cfg_train.freeze_encoder_epochs else [])
        self.encoder_frozen = False
        # channels_last: depthwise convolutions train ~1.3x faster this way on a CPU.
        self.memory_format = (torch.channels_last if self.cfg_train.channels_last
                              else torch.contiguous_format)
        self.model.to(memory_format=self.memory_format)
        self.trained_model = (DistributedDataParallel(self.model) if world.distributed
                              else self.model)
        self.loss_fn = self.task.build_loss(recipe.loss.model_dump())
        self.optimizer = build_optimizer(self.model.parameters(), recipe.optimizer)

        self.batch_size = self.cfg_train.batch_size
        self.epoch_size = EpochBatches.epoch_size(self.draws)
        self.batches_per_epoch = EpochBatches.batches_per_epoch(self.epoch_size,
                                                                self.batch_size)
        if self.batches_per_epoch == 0:
            raise SonocadError("the training subset is empty")
        self.epochs = self.cfg_train.epochs
        self.total_steps = _total_steps(self.epochs, self.cfg_train.max_steps,
                                        self.batches_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, recipe.scheduler, self.total_steps)
        if not self.task.validation_loss and self.scheduler is not None and \
                not steps_per_optimizer_step(self.scheduler):
            raise SonocadError(f"scheduler {recipe.scheduler.name!r} watches the "
                               f"validation loss, which {self.task.name} validation does not "
                               "compute; use cosine or warmup_cosine")
        self.select_metric = self.cfg_train.select_metric or self.task.select_metric
        self.select_sign = 1.0 if self.cfg_train.select_mode == "max" else -1.0
        use_amp = self.cfg_train.amp and world.device.type == "cuda"
        self.autocast = torch.autocast(world.device.type, enabled=use_amp)
        self.scaler = torch.amp.GradScaler(world.device.type, enabled=use_amp)
        self.history: list[dict[str, Any]] = []
        self.tensorboard = _tensorboard_writer(out) if (
            self.cfg_train.tensorboard and world.is_main) else None

    # --- the loop --------------------------------------------------------------------------

    def run(self, resume: bool, overwrite: bool) -> TrainResult:
        if self.world.is_main:
            claim_output_dir(self.out, "train", inputs=_inputs(self.sources),
                             overwrite=overwrite, resume=resume)
        state = self._resume() if resume else _Progress()
        if self.world.is_main:
            write_text(self.out / "recipe.yaml",
                       yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))
        started = time.monotonic() - state.elapsed_s
        max_seconds = (self.cfg_train.max_minutes * 60 if self.cfg_train.max_minutes
                       else math.inf)
        checkpoint_every = self.cfg_train.checkpoint_every or self.batches_per_epoch
        display = _Display(self, state.step)
        stop = state.step >= self.total_steps
        with self._steps_csv(state.step) as log_step:
            while not stop and state.epoch < self.epochs:
                self._freeze_encoder(state.epoch < self.cfg_train.freeze_encoder_epochs)
                for batch in self._loader(state):
                    lr = self.optimizer.param_groups[0]["lr"]  # this step's: _step moves it on
                    loss = self._step(batch)
                    if not math.isfinite(loss):
                        raise self._diverged(state.step + 1, f"the loss is {loss}")
                    state.epoch_losses.append(loss)
                    state.batch += 1
                    state.step += 1
                    log_step(state.step, state.epoch + 1, loss, lr)
                    display.step(state)
                    out_of_time = time.monotonic() - started > max_seconds
                    stop = state.step >= self.total_steps or out_of_time
                    if stop:
                        break
                    if state.step % checkpoint_every == 0 and state.batch < self.batches_per_epoch:
                        state.elapsed_s = time.monotonic() - started
                        self._save_last(state)
                losses = state.epoch_losses
                if state.batch >= self.batches_per_epoch:  # else stopped early: the epoch goes on
                    state.epoch, state.batch, state.epoch_losses = state.epoch + 1, 0, []
                validating = time.monotonic()
                improved_or_none = self._validate(state, losses, started)
                state.validation_s = time.monotonic() - validating
                display.exclude(state.validation_s)
                if not improved_or_none and self._early_stop(state):
                    stop = True
                state.elapsed_s = time.monotonic() - started
                self._save_last(state)
        display.close()
        barrier(self.world)
        return self._finish(state)

    @contextmanager
    def _steps_csv(self, step: int) -> Iterator[Callable[[int, int, float, float], None]]:
        """A function that adds a row (step, epoch, loss, lr) to ``steps.csv`` and flushes it,
        so a run killed anywhere keeps every step it took. The rows after `step` are cut first,
        in one atomic rewrite: a resumed run takes those steps again. Other DDP processes write
        nothing."""
        if not self.world.is_main:
            yield lambda *row: None
            return
        path = self.out / STEPS
        write_text(path, _csv_text([list(STEP_FIELDS), *_steps_up_to(path, step)]))
        with open(path, "a", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")

            def log_step(*row: int | float) -> None:
                writer.writerow(row)
                handle.flush()

            yield log_step

    def _loader(self, state: _Progress) -> DataLoader:
        seed = self.cfg_train.seed
        sampler = EpochBatches(len(self.train_set), self.batch_size, seed=seed,
                               epoch=state.epoch, rank=self.world.rank, world=self.world.size,
                               start=state.batch, draws=self.draws)
        if state.batch == 0:
            # Loaders drew their iterator's base seed from the global RNG; still draw it at an
            # epoch's start, so that dropout masks (and weights) stay those of earlier runs.
            torch.empty((), dtype=torch.int64).random_()
        workers = self.cfg_train.num_workers
        # Its own generator: a loader made mid-epoch on resume must not draw from the global
        # RNG, whose state last.pt restored (dropout and proposal sampling read it).
        return DataLoader(self.train_set, batch_sampler=sampler, num_workers=workers,
                          persistent_workers=False, collate_fn=collate,
                          pin_memory=self.world.device.type == "cuda",
                          generator=epoch_generator(seed, state.epoch))

    def _freeze_encoder(self, frozen: bool) -> None:
        for module in self.encoder:
            module.requires_grad_(not frozen)
        self.encoder_frozen = frozen

    def _step(self, batch: dict[str, Any]) -> float:
        self.trained_model.train()
        if self.encoder_frozen:
            for module in self.encoder:
                module.eval()  # a frozen encoder keeps its batch-norm statistics too
        images = batch["image"].to(self.world.device, memory_format=self.memory_format)
        target = self.task.targets(batch, self.world.device)
        with self.autocast:
            outputs = self.task.forward(self.trained_model, images, target)
            loss = self.loss_fn(outputs, target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg_train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg_train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if steps_per_optimizer_step(self.scheduler):
            self.scheduler.step()
        return mean_over_world(loss.item(), self.world)

    def _validate(self, state: _Progress, losses: list[float], started: float) -> bool:
        """Validate, log, keep the best weights; True when this validation is the best so far."""
        self._check_weights(state.step)
        with _watch_outputs(self.model) as seen:
            metrics = validate(self.model, self.val_set, self.task, self.loss_fn, self.world,
                               batch_size=self.cfg_train.eval_batch_size)
        # Finite weights so large that outputs overflow. Each process saw its own share of
        # the images: all of them stop if any saw one.
        if mean_over_world(float(bool(seen)), self.world) > 0:
            raise self._diverged(state.step, "the model's output on validation images is not "
                                             f"finite ({' or '.join(sorted(seen)) or 'nan'})")
        if self.scheduler is not None and not steps_per_optimizer_step(self.scheduler):
            self.scheduler.step(metrics["loss"])
        if self.select_metric not in metrics:
            raise SonocadError(f"train.select_metric {self.select_metric!r} is not a validation "
                               f"metric; choose from {', '.join(sorted(metrics))}")
        value = metrics[self.select_metric]
        improved = self._improves(value, state.best_value)
        row = {"epoch": state.epoch, "step": state.step,
               "train_loss": sum(losses) / len(losses) if losses else float("nan"),
               **{f"val_{k}": v for k, v in metrics.items()},
               "lr": self.optimizer.param_groups[0]["lr"],
               "seconds": round(time.monotonic() - started, 1)}
        self.history.append(row)
        if improved:
            state.best_value, state.best_metrics, state.bad_validations = value, metrics, 0
            if self.world.is_main:
                save_checkpoint(self.out / "best.pt", self._checkpoint(state))
        else:
            state.bad_validations += 1
        if self.tensorboard is not None:
            for key, value in row.items():
                if key not in ("epoch", "step"):
                    self.tensorboard.add_scalar(key, value, state.step)
            self.tensorboard.flush()
        if self.world.is_main:
            self._write_history()
            if not _is_tty():
                # The epoch this validation closes, counted from 1 as the progress line does
                # (a run stopped mid-epoch validates inside it).
                epoch = state.epoch + (state.batch > 0)
                print(f"epoch {epoch} step {state.step}/{self.total_steps} "
                      f"train loss {row['train_loss']:.4f} val {self.select_metric} {value:.4f}"
                      f"{' (best)' if improved else ''} {row['seconds']:.0f} s", flush=True)
        return improved

    def _improves(self, value: float, best: float | None) -> bool:
        """Whether `value` beats the best so far; NaN beats nothing, and anything beats NaN."""
        if best is None:
            return True
        if math.isnan(value):
            return False
        return math.isnan(best) or self.select_sign * value > self.select_sign * best

    def _early_stop(self, state: _Progress) -> bool:
        patience = self.cfg_train.early_stopping
        return patience is not None and state.bad_validations >= patience

    # --- checkpoints -----------------------------------------------------------------------

    def _checkpoint(self, state: _Progress, training: bool = False) -> Checkpoint:
        meta = {
            "task": self.task.name,
            "model": {"name": self.recipe.model.name, "args": self.model_args},
            "class_names": self.class_names,
            "transform": self.transform_config.to_dict(),
            "recipe": self.recipe.to_dict(),
            "data": self.data_info,
            "metrics": state.best_metrics if not training else None,
            "select_metric": self.select_metric,
            "epoch": state.epoch,
            "step": state.step,
            **({"init": self.origin} if self.origin else {}),
        }
        training_state = None
        if training:
            training_state = {
                "progress": asdict(state),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                # On a GPU, dropout draws from the device's generator, not the CPU one.
                "cuda_rng": (torch.cuda.get_rng_state(self.world.device)
                             if self.world.device.type == "cuda" else None),
                "history": self.history,
            }
        return Checkpoint(meta, self.model.state_dict(), training_state)

    def _save_last(self, state: _Progress) -> None:
        self._check_weights(state.step)  # on every process: they all stop together
        if self.world.is_main:
            save_checkpoint(self.out / "last.pt", self._checkpoint(state, training=True))

    def _resume(self) -> _Progress:
        path = self.out / "last.pt"
        checkpoint = load_checkpoint(path)
        if checkpoint.training_state is None:
            raise SonocadError(f"{path}: has no training state to resume from")
        run_total_steps = self._check_same_recipe(path, checkpoint.info.recipe)
        if checkpoint.info.data.get("fingerprint") != self.data_info["fingerprint"]:
            raise SonocadError(f"{path}: was trained on other data or another split; "
                               "resume with the same --data and --split")
        training = checkpoint.training_state
        progress = _Progress(**training["progress"])
        self.model.load_state_dict(checkpoint.state_dict)
        self.optimizer.load_state_dict(training["optimizer"])
        self._restore_schedule(training["scheduler"], run_total_steps, progress.step)
        self.scaler.load_state_dict(training["scaler"])
        torch.set_rng_state(training["torch_rng"])
        if training.get("cuda_rng") is not None and self.world.device.type == "cuda":
            torch.cuda.set_rng_state(training["cuda_rng"], self.world.device)
        self.history = list(training["history"])
        return progress

    def _check_same_recipe(self, path: Path, recorded: Any) -> int:
        """Refuse a recipe that differs from the run's but for `RESUMABLE_KEYS`; the run's
        total steps."""
        if not isinstance(recorded, dict):
            raise SonocadError(f"{path}: records no recipe to compare this one with; "
                               "train a new run")
        changes = recipe_changes(recorded, self.recipe.to_dict())
        refused = {key: values for key, values in changes.items() if key not in RESUMABLE_KEYS}
        if refused:
            shown = ", ".join(f"{key} ({_shown(now)}, was {_shown(was)})"
                              for key, (now, was) in refused.items())
            raise SonocadError(f"{path}: the recipe differs from the run's in {shown}; resume "
                               f"with the run's recipe ({self.out / 'recipe.yaml'}) or train "
                               "a new run")
        train = merge(DEFAULTS, recorded)["train"]
        return _total_steps(train["epochs"], train["max_steps"], self.batches_per_epoch)

    def _restore_schedule(self, saved: dict[str, Any] | None, run_total_steps: int,
                          step: int) -> None:
        """The run's schedule as it was; for a new length, a per-step schedule built for it
        and advanced to `step` (the run's own would climb back up past its end)."""
        if self.scheduler is None or saved is None:
            return
        if run_total_steps == self.total_steps or not steps_per_optimizer_step(self.scheduler):
            self.scheduler.load_state_dict(saved)
            return
        for group in self.optimizer.param_groups:  # the schedule starts from the recipe's lr
            group["lr"] = group["initial_lr"]
        self.scheduler = build_scheduler(self.optimizer, self.recipe.scheduler, self.total_steps)
        with warnings.catch_warnings():  # stepped before this process's first optimiser step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(step):
                self.scheduler.step()

    def _finish(self, state: _Progress) -> TrainResult:
        if self.world.is_main:
            write_json(self.out / "summary.json", {
                "select_metric": self.select_metric, "best_value": state.best_value,
                "best_metrics": state.best_metrics, "steps": state.step, "epochs": state.epoch,
                "minutes": round(state.elapsed_s / 60, 2), "data": self.data_info})
        return TrainResult(self.out, self.out / "best.pt", self.select_metric,
                           float(state.best_value), state.step)

    def _check_weights(self, step: int) -> None:
        damage = non_finite_weights(self.model.state_dict())
        if damage:
            raise self._diverged(step, f"the weights are not finite ({damage})")

    def _diverged(self, step: int, what: str) -> SonocadError:
        """The one line that stops a diverging run, with what to change."""
        lr, clip = self.recipe.optimizer.lr, self.cfg_train.grad_clip
        remedy = (f"lower optimizer.lr (now {lr:g}) or "
                  + ("set train.grad_clip" if clip is None else f"train.grad_clip (now {clip:g})"))
        return SonocadError(f"training diverged at step {step}: {what}; {remedy}, and train "
                            "again with --overwrite")

    def _write_history(self) -> None:
        fields = list(dict.fromkeys(key for row in self.history for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_open(self.out / "metrics.csv", "w", encoding="utf-8") as handle:
            handle.write(buffer.getvalue())


class _Display:
    """Training's progress on the main process: a bar on a terminal, elsewhere a line at the
    first step and every 30 s; the time left counts the validations to come at the latest
    one's duration (until the first, it says they are not timed yet)."""

    def __init__(self, trainer: _Trainer, first_step: int) -> None:
        self.total_steps, self.epochs = trainer.total_steps, trainer.epochs
        self.batches_per_epoch, self.batch_size = trainer.batches_per_epoch, trainer.batch_size
        self.first_step, self.shown = first_step, trainer.world.is_main
        self.tty = self.shown and _is_tty()
        # The bar's own time left would leave the validations out: the postfix says it.
        self.bar = tqdm(total=self.total_steps, initial=first_step, desc="training", unit="step",
                        disable=not self.tty, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}"
                                   "{postfix}]")
        self.pace = RateLog("training step", self.total_steps, unit=" images", first=True,
                            start=first_step)

    def step(self, state: _Progress) -> None:
        if not self.shown:
            return
        untimed = state.validation_s is None
        validations_s = 0.0 if untimed else state.validation_s * _validations_left(
            state.step, self.total_steps, self.batches_per_epoch)
        loss, epoch = f"{state.epoch_losses[-1]:.4f}", state.epoch + 1
        if self.tty:
            left = duration(self.pace.left_s(state.step, validations_s) or 0.0)
            self.bar.update(1)
            self.bar.set_postfix(loss=loss, epoch=epoch,
                                 left=left + (" + validation" if untimed else ""))
            return
        images = (state.step - self.first_step) * self.batch_size  # a global batch
        self.pace.update(state.step, images, f"loss {loss}, epoch {epoch}/{self.epochs}"
                         + (", validation not timed yet" if untimed else ""),
                         also_left_s=validations_s)

    def exclude(self, seconds: float) -> None:
        """Leave a validation's `seconds` out of the training pace."""
        self.pace.exclude(seconds)

    def close(self) -> None:
        self.bar.close()


@contextmanager
def _watch_outputs(model: nn.Module) -> Iterator[set[str]]:
    """The kinds of non-finite value ("nan", "inf") in `model`'s outputs while in the block."""
    seen: set[str] = set()

    def look(module: nn.Module, inputs: Any, output: Any) -> None:
        seen.update(kind for tensor in _tensors(output) if (kind := non_finite(tensor)))

    handle = model.register_forward_hook(look)
    try:
        yield seen
    finally:
        handle.remove()


def _tensors(output: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a model's output (a tensor, or dicts, lists and tuples of them)."""
    if isinstance(output, torch.Tensor):
        yield output
    elif isinstance(output, dict):
        for value in output.values():
            yield from _tensors(value)
    elif isinstance(output, (list, tuple)):
        for value in output:
            yield from _tensors(value)


def _initialise(model: nn.Module, name: str, init: str, class_names: list[str]
                ) -> dict[str, Any]:
    """Load the weights of checkpoint `init` ("default": the bundled model) into `model`, which
    must be the same model with the same classes; what it started from, for the meta."""
    source = bundled_checkpoint() if init == "default" else load_checkpoint(init)
    where = "the bundled default model" if init == "default" else init
    if source.class_names != class_names:
        raise SonocadError(f"--init {where}: its classes {source.class_names} are not the "
                           f"recipe's {class_names}")
    built = source.info.model
    mismatch = SonocadError(f"--init {where}: its model {built.name!r} {built.args} is not the "
                            f"recipe's {name!r} (name and arguments must match)")
    if built.name != name:
        raise mismatch
    try:
        model.load_state_dict(source.build_model().state_dict())
    except RuntimeError:
        raise mismatch from None
    info = source.info
    return {"from": init, "sonocad_version": info.sonocad_version,
            "model": {"name": info.model.name, "args": info.model.args}, "epoch": info.epoch,
            "sources": [{k: v for k, v in item.items() if k != "path"}
                        for item in info.data.get("sources", [])]}


def _encoder(model: nn.Module, name: str) -> list[nn.Module]:
    """The modules a model names as its encoder (`encoder_prefixes`), for freezing."""
    prefixes = getattr(model, "encoder_prefixes", None)
    if not prefixes:
        raise SonocadError(f"train.freeze_encoder_epochs: model {name!r} does not name its "
                           "encoder (encoder_prefixes)")
    return [model.get_submodule(prefix) for prefix in prefixes]


def _views(recipe: Recipe, class_names: list[str]) -> ViewConfig | None:
    """The recipe's training views; a tissue view is a normal image, so the class must exist."""
    section = recipe.data.views
    if section is None:
        return None
    if section.tissue > 0 and "normal" not in class_names and recipe.task != "segmentation":
        raise SonocadError("data.views.tissue trains lesion-free windows as normal images: "
                           "add normal to data.classes, or set data.views.tissue=0")
    return ViewConfig(section.p, section.tissue, tuple(section.scale), section.margin)


def _total_steps(epochs: int, max_steps: int | None, batches_per_epoch: int) -> int:
    total = epochs * batches_per_epoch
    return total if max_steps is None else min(total, max_steps)


def _validations_left(step: int, total_steps: int, batches_per_epoch: int) -> int:
    """The validations still to come once `step` is done: one at each epoch's end from `step`
    on (the one at `step` itself included), and one at the last step."""
    next_end = max(-(-step // batches_per_epoch), 1) * batches_per_epoch
    return len(range(next_end, total_steps, batches_per_epoch)) + 1


def _steps_up_to(path: Path, step: int) -> list[list[str]]:
    """The rows of steps 1 .. `step` in the ``steps.csv`` at `path`, in order; a missing file
    has none, and a row out of order or cut short by a kill ends them."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.reader(handle))[1:]
    except FileNotFoundError:
        return []
    kept = []
    for expected, row in zip(range(1, step + 1), rows):
        if len(row) != len(STEP_FIELDS) or row[0] != str(expected):
            break
        kept.append(row)
    return kept


def _csv_text(rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _shown(value: Any) -> str:
    """A recipe value as a message shows it: as in YAML / JSON, or ``absent``."""
    return ABSENT if value == ABSENT else json.dumps(value)


def _inputs(sources: list[Source]) -> list[Path]:
    """What training reads, which its output folder must not hold or lie in."""
    return [path for source in sources for path in (source.path, source.split)]


def _tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise SonocadError("train.tensorboard needs the tensorboard package "
                           "(pip install tensorboard); the CSV log needs nothing") from None
    return SummaryWriter(str(out / "tensorboard"))


def _select_samples(cfg: DataSection, sources: list[Source]
                    ) -> tuple[list[Sample], list[Sample], list[float], dict[str, Any]]:
    """Training and validation samples of every source, each training sample's draws per
    epoch (source weight x class weight), and what the checkpoint records about the data."""
    labels = set(cfg.labels) if cfg.labels else None
    weights_by_class = class_weights(cfg.class_weights)
    train_samples: list[Sample] = []
    val_samples: list[Sample] = []
    draws: list[float] = []
    described = []
    fingerprint = hashlib.sha256()
    for source in sources:
        samples, split = source.open(cfg.layout), read_split(source.split)
        source_train, source_val = (_subset(samples, split, source.split, names, labels,
                                            cfg.limit)
                                    for names in (cfg.train_subsets,
                                                  [cfg.val_subset] if source.validated else []))
        train_samples += source_train
        val_samples += source_val
        draws += [source.weight * weights_by_class.get(s.label or "", 1.0)
                  for s in source_train]
        fingerprint.update(source.name.encode())
        for sample in source_train + [None] + source_val:  # None marks the train/val boundary
            fingerprint.update(b"|" if sample is None else _file_key(sample))
        described.append({"name": source.name, "path": str(source.path),
                          "split": str(source.split), "split_fingerprint": split.fingerprint,
                          "weight": source.weight, "n_train": len(source_train),
                          "n_val": len(source_val),
                          **({} if source.validated else {"replay": True})})
    single = described[0] if len(described) == 1 else None
    info = {"path": single["path"] if single else "+".join(d["name"] for d in described),
            "split": single["split"] if single else "+".join(d["split"] for d in described),
            "split_fingerprint": single["split_fingerprint"] if single else None,
            "fingerprint": fingerprint.hexdigest(), "n_train": len(train_samples),
            "n_val": len(val_samples), "train_subsets": list(cfg.train_subsets),
            "val_subset": cfg.val_subset, "labels": sorted(labels) if labels else None,
            "sources": described, "class_weights": weights_by_class or None,
            "epoch_composition": _composition(train_samples, draws)}
    return train_samples, val_samples, draws, info


def _subset(samples: list[Sample], split: SplitFile, split_path: Path, names: list[str],
            labels: set[str] | None, limit: int | None) -> list[Sample]:
    chosen: list[Sample] = []
    for name in names:
        if name not in split.subsets:
            raise SonocadError(f"{split_path}: has no subset {name!r} "
                               f"(it has {', '.join(split.subsets)})")
        chosen += select(samples, split.subsets[name])
    if labels is not None:
        chosen = [s for s in chosen if s.label in labels]
    return _spread(chosen, limit)


def _composition(samples: list[Sample], draws: list[float]) -> dict[str, dict[str, float]]:
    """Expected draws per epoch by source and class: the class balance the sampler gives."""
    out: dict[str, dict[str, float]] = {}
    for sample, weight in zip(samples, draws):
        by_class = out.setdefault(sample.source or "data", {})
        by_class[sample.label or "unlabelled"] = by_class.get(sample.label or "unlabelled",
                                                              0.0) + weight
    return {source: {k: round(v, 1) for k, v in sorted(c.items())} for source, c in out.items()}


def _file_key(sample: Sample) -> bytes:
    size = sample.image_path.stat().st_size if sample.image_path.exists() else -1
    return f"{sample.image_id}:{size};".encode()


def _spread(samples: list[Sample], limit: int | None) -> list[Sample]:
    """At most `limit` samples, evenly spaced in id order (so a smoke run still mixes classes)."""
    if limit is None or len(samples) <= limit:
        return samples
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()
