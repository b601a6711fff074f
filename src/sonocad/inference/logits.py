"""The torch model call: a checkpoint's module returning only its task's logits (`LogitsOnly`,
what ONNX export traces too) behind the Predictor's `Runner` interface (numpy in and out), and
the check that a back end can run a task."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from sonocad.errors import SonocadError
from sonocad.tasks import Task, get_task


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
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        outputs = self.module(torch.from_numpy(batch).to(self.device))
        return tuple(t.float().cpu().numpy() for t in outputs)


def check_task(name: str, backend: str = "torch") -> Task:
    """The task of a model to run on `backend`; a one-line error where it cannot."""
    task = get_task(name)
    if backend == "onnx" and not task.output_names:
        raise SonocadError(f"{name} models run on the torch back end only: their ONNX export "
                           "is not verified (see docs/detection.md)")
    return task
