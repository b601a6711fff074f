"""The model call behind every back end: a checkpoint's module returning only its task's logits
(`LogitsOnly`, what ONNX export traces too), and the check that a back end can run a task."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from sonocad.errors import SonocadError
from sonocad.tasks import Task, get_task


class Runner(Protocol):
    """The model call: a float32 batch (N, 3, H, W) of preprocessed images in, a tuple of
    float32 CPU logits out (see `LogitsOnly`)."""

    def __call__(self, batch: Tensor) -> tuple[Tensor, ...]: ...


class LogitsOnly(nn.Module):
    """`model` returning only logits, as the tuple its task names (`Task.output_names`): the
    lesion logits (N, 1, H, W) and/or the class logits (N, K)."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return self.task.logits(self.model(x))


class TorchRunner:
    def __init__(self, model: nn.Module, task: Task, device: str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = LogitsOnly(model, task).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, batch: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.float().cpu() for t in self.module(batch.to(self.device)))


def check_task(name: str, backend: str = "torch") -> Task:
    """The task of a model to run on `backend`; a one-line error where it cannot."""
    task = get_task(name)
    if backend == "onnx" and not task.output_names:
        raise SonocadError(f"{name} models run on the torch back end only: their ONNX export "
                           "is not verified (see docs/detection.md)")
    return task
