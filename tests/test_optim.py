"""Learning-rate schedules: torch's schedulers give the documented curves step by step."""

from __future__ import annotations

import math

import pytest
import torch

from sonocad.engine.optim import build_optimizer, build_scheduler
from sonocad.engine.recipe import OptimizerSection, SchedulerSection

OPTIMIZER = OptimizerSection(name="adamw", lr=0.01, weight_decay=0.0, momentum=0.9,
                             betas=[0.9, 0.999])


def _rates(config: dict, total: int) -> list[float]:
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OPTIMIZER)
    scheduler = build_scheduler(optimizer, SchedulerSection(**config), total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def _cosine(step: int, steps: int, floor: float) -> float:
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0)))


@pytest.mark.parametrize("warmup", [1, 2, 7])
@pytest.mark.parametrize("floor", [0.0, 0.01])
def test_warmup_cosine_ramps_linearly_then_falls_to_the_floor(warmup: int, floor: float):
    total = 40
    got = _rates({"name": "warmup_cosine", "args": {"warmup_steps": warmup,
                                                     "min_lr_ratio": floor}}, total)
    want = [0.01 * ((step + 1) / warmup if step < warmup
                    else _cosine(step - warmup, total - warmup, floor)) for step in range(total)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_cosine_falls_from_the_lr_to_the_floor_over_the_run():
    got = _rates({"name": "cosine", "args": {"min_lr_ratio": 0.1}}, 30)
    assert got == pytest.approx([0.01 * _cosine(step, 30, 0.1) for step in range(30)],
                                rel=1e-9)
    assert got[0] == 0.01 and got[-1] > 0.001


def test_a_resumed_schedule_goes_on_where_it_stopped():
    config = {"name": "warmup_cosine", "args": {"warmup_steps": 5}}
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OPTIMIZER)
    scheduler = build_scheduler(optimizer, SchedulerSection(**config), 20)
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    state = (optimizer.state_dict(), scheduler.state_dict())
    resumed_optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OPTIMIZER)
    resumed = build_scheduler(resumed_optimizer, SchedulerSection(**config), 20)
    resumed_optimizer.load_state_dict(state[0])
    resumed.load_state_dict(state[1])
    for _ in range(12):
        for opt, sched in ((optimizer, scheduler), (resumed_optimizer, resumed)):
            opt.step()
            sched.step()
        assert resumed_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
