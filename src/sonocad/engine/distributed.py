"""Process-group set-up for `torchrun` (DDP); a plain run is a world of one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world() -> World:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs), if any."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(rank=int(os.environ.get("RANK", "0")), size=size, device=device)


def close_world(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_world(value: float, world: World) -> float:
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return tensor.item() / world.size


def gather_lists(items: list[Any], world: World) -> list[Any]:
    """Concatenate every rank's list on every rank."""
    if not world.distributed:
        return items
    gathered: list[list[Any]] = [[] for _ in range(world.size)]
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
