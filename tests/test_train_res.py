"""Stage II's ``train_res`` (edgedd.distillation.stage2.freeze_fine_levels): from a real start, the
levels finer than train_res never move, so the change Stage II makes to an image is band-limited;
0 trains every level."""

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
from edgedd.distillation.stage2 import Loop, steps
from edgedd.host.memory import PhaseMemory


def _run(train_res: int) -> tuple[Pyramid, list[torch.Tensor]]:
    cfg = DistillConfig(lr=5e-2, iterations=6, syn_res=16, train_res=train_res)
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pyr = Pyramid.from_images(images)
    start = [lv.detach().clone() for lv in pyr.levels]
    loop = Loop(pyr, adam(pyr.levels, cfg.lr), torch.Generator().manual_seed(0), 0, math.nan)
    target = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))

    def step(loop: Loop) -> torch.Tensor:
        loss = (loop.pyr.decode() - target).pow(2).sum()
        loss.backward()
        return loss

    for _ in steps(loop, step, cfg=cfg, stop=cfg.iterations, memory=PhaseMemory(torch.device("cpu"))):
        pass
    return pyr, start


def test_levels_finer_than_train_res_keep_their_start():
    pyr, start = _run(train_res=4)
    assert pyr.resolutions == [1, 2, 4, 8, 16]
    for lv, lv0 in zip(pyr.levels, start, strict=True):
        moved = not torch.equal(lv.detach(), lv0)
        assert moved == (lv.shape[-1] <= 4), lv.shape


def test_zero_trains_every_level():
    pyr, start = _run(train_res=0)
    assert all(not torch.equal(lv.detach(), lv0) for lv, lv0 in zip(pyr.levels, start, strict=True))


def test_a_negative_train_res_is_refused():
    with pytest.raises(EdgeddError, match="--train-res must be 0 or more"):
        validate(replace(DistillConfig(), train_res=-1))
