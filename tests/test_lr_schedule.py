"""Stage II's learning-rate schedule (edgedd.distillation.stage2.step_lr): the rate each step runs at
is a function of the step alone, and the optimiser takes that rate on every step, also after Adam
restarts at a pyramid extension."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from edgedd.core.config import DistillConfig
from edgedd.core.errors import EdgeddError
from edgedd.distillation.checkpoint import adam
from edgedd.distillation.pipeline import validate
from edgedd.distillation.pyramid import Pyramid
from edgedd.distillation.stage2 import Loop, step_lr, steps
from edgedd.host.memory import PhaseMemory


def test_constant_is_the_reference_rate_on_every_step():
    cfg = DistillConfig(lr=3e-3, iterations=50)
    assert cfg.lr_schedule == "constant"
    assert {step_lr(cfg, i) for i in range(50)} == {3e-3}


def test_cosine_anneals_from_lr_towards_zero():
    cfg = DistillConfig(lr=4e-3, iterations=100, lr_schedule="cosine")
    rates = [step_lr(cfg, i) for i in range(100)]
    assert rates[0] == pytest.approx(4e-3)
    assert rates[50] == pytest.approx(2e-3)  # halfway: half the rate
    assert all(rates[i] > rates[i + 1] for i in range(len(rates) - 1))  # strictly falling
    assert 0 < rates[-1] < 4e-3 * 1e-3  # the last step is tiny, not zero (no wasted step)
    # the mean rate over the run is half the peak: cosine at 2 x lr moves as far as constant lr
    assert sum(rates) / len(rates) == pytest.approx(2e-3, rel=0.02)


def test_an_unknown_schedule_is_refused_by_name():
    with pytest.raises(EdgeddError, match="unknown learning-rate schedule 'linear'"):
        validate(replace(DistillConfig(), lr_schedule="linear"))


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_optimiser_runs_each_step_at_its_scheduled_rate(schedule):
    """From noise the pyramid grows and Adam restarts (at cfg.lr): the schedule still holds after it."""
    cfg = DistillConfig(lr=1e-2, iterations=12, syn_res=4, extend_every=2, lr_schedule=schedule)
    gen = torch.Generator().manual_seed(0)
    pyr = Pyramid.init(2, cfg.syn_res, gen)
    loop = Loop(pyr, adam(pyr.levels, cfg.lr), gen, 0, math.nan)
    seen = []

    def step(loop: Loop) -> torch.Tensor:
        loss = loop.pyr.decode().pow(2).sum()
        loss.backward()
        return loss

    restarts = 0
    last_opt = loop.opt
    for done in steps(loop, step, cfg=cfg, stop=cfg.iterations, memory=PhaseMemory(torch.device("cpu"))):
        restarts += done.opt is not last_opt
        last_opt = done.opt
        seen.append(done.opt.param_groups[0]["lr"])
    assert restarts >= 1  # the case where a fresh Adam would otherwise run at cfg.lr
    assert seen == [step_lr(cfg, i) for i in range(cfg.iterations)]
    if schedule == "cosine":
        assert seen[-1] < cfg.lr / 10
