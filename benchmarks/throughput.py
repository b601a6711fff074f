"""Training and inference images/s of every recipe, on this CPU (2 threads).

Usage: python benchmarks/throughput.py [--repeats N]
Training: one optimiser step (forward, loss over all outputs, backward, step) on a batch of the
recipe's size at its input size, in the recipe's memory format. Inference: eval-mode forward,
batch 1, at the input size. Random pixels and targets: speed does not depend on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _common import best_seconds, machine_line
from sonocad.engine.optim import build_optimizer
from sonocad.engine.recipe import load_recipe
from sonocad.models import create_model
from sonocad.tasks import get_task
from sonocad.transforms import TransformConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TASKS = ("multitask", "segmentation", "classification")


def measure(path: Path, repeats: int) -> tuple[str, int, int, float, float]:
    recipe = load_recipe(path)
    task = recipe.task
    height, width = TransformConfig.from_dict(recipe.transform).size
    batch = recipe.train.batch_size
    classes = len(recipe.data.labels or recipe.data.classes)
    head = {"num_classes": classes} if task != "segmentation" else {}
    memory_format = (torch.channels_last if recipe.train.channels_last
                     else torch.contiguous_format)
    model = create_model(recipe.model.name, **recipe.model.args, **head)
    model.to(memory_format=memory_format)
    loss_fn = get_task(task).build_loss(recipe.loss.model_dump())
    optimizer = build_optimizer(model.parameters(), recipe.optimizer)
    images = torch.randn(batch, 3, height, width).contiguous(memory_format=memory_format)
    mask = (torch.rand(batch, 1, height, width) > 0.7).float()
    labels = torch.randint(0, classes, (batch,))
    target = {"segmentation": mask, "classification": labels, "multitask": (mask, labels)}[task]

    def train_step() -> None:
        model.train()
        loss = loss_fn(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def infer() -> None:
        model.eval()
        with torch.no_grad():
            model(images[:1])

    train_s = best_seconds(train_step, repeats=repeats)
    infer_s = best_seconds(infer, repeats=repeats)
    return task, height, batch, batch / train_s, 1 / infer_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"Training and inference throughput — {machine_line()}\n")
    print("| recipe | task | input px | train batch | train images/s | "
          "inference images/s (batch 1) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for path in sorted(RECIPES.glob("*.yaml")):
        if load_recipe(path).task not in TASKS:
            continue
        task, size, batch, train_ips, infer_ips = measure(path, args.repeats)
        print(f"| {path.stem} | {task} | {size} | {batch} | {train_ips:.2f} | {infer_ips:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
