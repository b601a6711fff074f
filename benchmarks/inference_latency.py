"""Milliseconds per image under torch eager and ONNX Runtime, every registered model.

Usage: python benchmarks/inference_latency.py [--size 256] [--repeats 10] [--models NAME ...]
Batch 1, a `--size` square input, 2 threads for both engines, measured side by side in one run
(the ratio is what to compare on a noisy machine). Untrained weights: speed does not depend
on them. The last line sets the default model (segmentation + classification in one call,
ONNX Runtime) against U2-Net-lite under torch eager, the issue's live-scanning target.
"""

from __future__ import annotations

import argparse

import torch

from _common import best_seconds, machine_line
from sonocad.checkpoint import Checkpoint
from sonocad.errors import SonocadError
from sonocad.inference.logits import TorchRunner
from sonocad.inference.onnx_backend import OnnxRunner
from sonocad.models import create_model, list_models
from sonocad.tasks import get_task
from sonocad.transforms import TransformConfig

DEFAULT, REFERENCE = "efficientnet_lite0_unet", "u2net_lite"


def runners(name: str, task: str, size: int) -> tuple[TorchRunner, OnnxRunner]:
    classifies = task in ("classification", "multitask")
    args = {"num_classes": 3} if classifies else {}
    model = create_model(name, **args)
    meta = {"task": task, "model": {"name": name, "args": args},
            "class_names": ["normal", "benign", "malignant"] if classifies
            else ["background", "lesion"],
            "transform": TransformConfig(input_size=size).to_dict(), "recipe": {}, "data": {},
            "metrics": {}}
    checkpoint = Checkpoint(meta, model.state_dict())
    return (TorchRunner(checkpoint.build_model(), get_task(task)),
            OnnxRunner.from_checkpoint(checkpoint))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help="only these registered models (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"Inference latency, batch 1, {args.size} px — {machine_line()}\n")
    print("| model | task | torch eager ms | ONNX Runtime ms | torch / ONNX |")
    print("| --- | --- | ---: | ---: | ---: |")
    image = torch.randn(1, 3, args.size, args.size).numpy()
    times: dict[str, tuple[float, float]] = {}
    for task in ("multitask", "segmentation", "classification"):
        for name in [n for n in list_models(task) if not args.models or n in args.models]:
            try:
                torch_runner, onnx_runner = runners(name, task, args.size)
            except SonocadError as exc:  # e.g. AlexNet's pooling exports only at 224 px
                print(f"| {name} | {task} | — | — | not exportable at {args.size} px: "
                      f"{str(exc).split(': ', 1)[-1]} |", flush=True)
                continue
            eager = best_seconds(lambda: torch_runner(image), repeats=args.repeats) * 1000
            onnx = best_seconds(lambda: onnx_runner(image), repeats=args.repeats) * 1000
            times[name] = eager, onnx
            print(f"| {name} | {task} | {eager:.1f} | {onnx:.1f} | {eager / onnx:.2f} |",
                  flush=True)
    if not {DEFAULT, REFERENCE} <= times.keys():
        return
    default_onnx, reference_eager = times[DEFAULT][1], times[REFERENCE][0]
    print(f"\n{DEFAULT} (segmentation + classification, ONNX Runtime) {default_onnx:.1f} ms "
          f"against {REFERENCE} (segmentation only, torch eager) {reference_eager:.1f} ms: "
          f"{reference_eager / default_onnx:.1f} x faster")


if __name__ == "__main__":
    main()
