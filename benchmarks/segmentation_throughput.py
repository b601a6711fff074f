"""Training and inference images/s of every segmentation recipe, on this CPU (2 threads).

Usage: python benchmarks/segmentation_throughput.py [--repeats N]
Training: one optimiser step (forward, loss over all outputs, backward, step) on a batch of the
recipe's size at its input size. Inference: eval-mode forward, batch 1, at the input size.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _common import best_seconds, machine_line
from sonocad.engine.losses import build_loss
from sonocad.engine.optim import build_optimizer
from sonocad.engine.recipe import load_recipe
from sonocad.models import create_model
from sonocad.transforms import TransformConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SEGMENTATION_RECIPES = ["frontiers2025_u2netlite", "frontiers2025_u2net", "unet",
                        "jmir2026_fcn101", "jmir2026_deeplabv3"]


def measure(recipe_name: str, repeats: int) -> tuple[str, int, int, float, float]:
    recipe = load_recipe(RECIPES / f"{recipe_name}.yaml")
    height, width = TransformConfig.from_dict(recipe["transform"]).size
    batch = int(recipe["train"]["batch_size"])
    model = create_model(recipe["model"]["name"], **recipe["model"]["args"])
    loss_fn = build_loss(recipe["loss"], "segmentation")
    optimizer = build_optimizer(model.parameters(), recipe["optimizer"])
    images = torch.randn(batch, 3, height, width)
    target = (torch.rand(batch, 1, height, width) > 0.7).float()

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
    return recipe_name, height, batch, batch / train_s, 1 / infer_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    print(f"Segmentation throughput — {machine_line()}\n")
    print("| recipe | input px | train batch | train images/s | inference images/s (batch 1) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in SEGMENTATION_RECIPES:
        name, size, batch, train_ips, infer_ips = measure(name, args.repeats)
        print(f"| {name} | {size} | {batch} | {train_ips:.2f} | {infer_ips:.2f} |", flush=True)


if __name__ == "__main__":
    main()
