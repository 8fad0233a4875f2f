"""sfm_sub's per-image term on the eval views only (``sub_views="centre"``): which views count, and
the term as the mean over them."""

from __future__ import annotations

import torch

from edgedd.core.config import AugmentConfig, DistillConfig
from edgedd.distillation.losses import anchor_loss, centre_separation, flow, subcentre_loss
from edgedd.distillation.stage2 import eval_view_share
from edgedd.host.augment import StepDraws, eval_box


def test_eval_view_share_marks_exactly_the_centre_crops():
    aug = AugmentConfig(crop_scale=(0.25, 1.0), noise_p=0.0, centre_p=0.5)
    cfg = DistillConfig(augment=aug, crop_res=64, syn_res=73)
    draws = StepDraws.draw(torch.Generator().manual_seed(3), 400, aug, 64, canvas=73)
    share = eval_view_share(draws, cfg)
    views = draws.params(0, 400).views
    lo, hi = eval_box(73, 64)
    want = torch.tensor([[lo, lo, hi, hi]] * 400, dtype=views.boxes.dtype)
    centre = torch.isclose(views.boxes, want).all(1) & ~views.flips
    assert torch.equal(share, centre.float())
    assert 120 < int(share.sum()) < 280  # about half, as centre_p says
    none = StepDraws.draw(torch.Generator().manual_seed(3), 50, AugmentConfig(centre_p=0.0), 64, canvas=73)
    assert eval_view_share(none, DistillConfig(augment=AugmentConfig(centre_p=0.0))).sum() == 0


def test_weighted_term_is_the_mean_over_the_weighted_images():
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(8, 5, generator=g, dtype=torch.float64)
    mu = torch.randn(2, 5, generator=g, dtype=torch.float64) * 3
    w = torch.tensor([1, 0, 1, 0, 0, 1, 0, 0], dtype=torch.float64)
    got = subcentre_loss(z, flow(mu), mu, t, 10.0, 3.0, weights=w) - anchor_loss(z, flow(mu), mu, 10.0)
    sq = ((z - t) ** 2).sum(1)
    torch.testing.assert_close(got, 3.0 * sq[w > 0].mean() / centre_separation(mu))
    # all ones is the unweighted term; all zeros drops it
    torch.testing.assert_close(
        subcentre_loss(z, flow(mu), mu, t, 10.0, 3.0, weights=torch.ones(8, dtype=torch.float64)),
        subcentre_loss(z, flow(mu), mu, t, 10.0, 3.0),
    )
    torch.testing.assert_close(
        subcentre_loss(z, flow(mu), mu, t, 10.0, 3.0, weights=torch.zeros(8, dtype=torch.float64)),
        anchor_loss(z, flow(mu), mu, 10.0),
    )
