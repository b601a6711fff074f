"""What an encoder costs to train and to run on this CPU: the default model's candidates (issue 25,
levers 3 and 4) side by side.

Usage: python benchmarks/encoder_cost.py [--batch 4] [--repeats 3]

Per image at 256 px, 2 threads, in one run: a training step (forward and backward of a batch of
`--batch`, divided by the batch) and inference (batch 1, torch eager), for the EfficientNet-Lite0
and -Lite1 U-Nets (all of the model) and for LiteMedSAM's TinyViT image encoder alone (the
medically pretrained encoder; a decoder and class head would come on top). The last column is
what the default recipe's 20 epochs of ~1,640 draws would take at that rate. Untrained weights:
speed does not depend on them. Needs the interactive extra for LiteMedSAM. Batch 4: a training
batch of 16 (the recipe's) of the TinyViT encoder, which keeps 64 channels at the full 256 x 256
in its first stage, does not fit in 24 GiB.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from _common import best_seconds, machine_line
from sonocad.models import create_model

SIZE = 256
EPOCH_DRAWS, EPOCHS = 1640, 20  # recipes/default.yaml


def candidates() -> dict[str, nn.Module]:
    from sonocad.models.litemedsam import TinyViTEncoder  # the interactive extra

    return {"EfficientNet-Lite0 U-Net (the default's member)": create_model(
                "efficientnet_lite0_unet"),
            "EfficientNet-Lite1 U-Net": create_model("efficientnet_lite1_unet"),
            "LiteMedSAM TinyViT encoder alone": TinyViTEncoder()}


def training_seconds(model: nn.Module, batch: int, repeats: int) -> float:
    """Seconds per image of one forward and backward pass over a batch."""
    model.train()
    images = torch.randn(batch, 3, SIZE, SIZE)

    def step() -> None:
        output = model(images)
        loss = (output["out"].mean() + output["class_logits"].mean()
                if isinstance(output, dict) else output.mean())
        loss.backward()
        model.zero_grad(set_to_none=True)

    return best_seconds(step, repeats=repeats) / batch


def inference_seconds(model: nn.Module, repeats: int) -> float:
    model.eval()
    image = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        return best_seconds(lambda: model(image), repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"Encoder cost, {SIZE} px — {machine_line()}\n")
    print("| network | training, ms per image | inference, ms per image (torch eager, batch 1) "
          f"| {EPOCHS} epochs of {EPOCH_DRAWS:,} draws |")
    print("| --- | ---: | ---: | ---: |")
    for name, model in candidates().items():
        train = training_seconds(model, args.batch, args.repeats)
        infer = inference_seconds(model, args.repeats)
        print(f"| {name} | {train * 1000:.0f} | {infer * 1000:.0f} | "
              f"{train * EPOCH_DRAWS * EPOCHS / 60:.0f} min |", flush=True)


if __name__ == "__main__":
    main()
