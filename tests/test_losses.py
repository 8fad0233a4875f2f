"""The SFM equations: flow rows sum to zero, the loss vanishes at matched centres, the reference
denominator is only equivalent at IPC = 1, and the decoupled ablation behaves likewise."""

import pytest
import torch

from edgedd.distillation.losses import (
    anchor_loss,
    centre_separation,
    class_centres,
    decouple_loss,
    flow,
    sfm_loss,
    synthetic_flow,
)


def _features(c, ipc, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c * ipc, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("c", [2, 3, 10])
def test_real_flow_rows_sum_to_zero(c):
    mu = _features(c, 1, 17, seed=c) * 5 + 3
    f = flow(mu)
    assert f.shape == (c, 17)
    torch.testing.assert_close(f.sum(0), torch.zeros(17, dtype=torch.float64), atol=1e-12, rtol=0)
    # and it is the definition: mean of the other centres minus this one
    torch.testing.assert_close(f[0], mu[1:].mean(0) - mu[0])


@pytest.mark.parametrize("ipc", [1, 4])
def test_sfm_loss_zero_when_centres_match(ipc):
    c, d = 5, 12
    z = _features(c, ipc, d)
    mu = class_centres(z, c)
    loss = sfm_loss(z, flow(mu))
    assert abs(loss.item()) < 1e-12
    # and clearly not zero for other centres
    assert sfm_loss(z, flow(mu + _features(c, 1, d, seed=9))).item() > 0.05


def test_class_centres_are_class_major_means():
    z = _features(3, 4, 6)
    torch.testing.assert_close(class_centres(z, 3)[1], z[4:8].mean(0))


def test_reference_denominator_matches_only_at_ipc_1():
    z1 = _features(4, 1, 8)
    torch.testing.assert_close(synthetic_flow(z1, 4, "reference"), synthetic_flow(z1, 4, "classes"))
    z3 = _features(4, 3, 8)
    assert not torch.allclose(synthetic_flow(z3, 4, "reference"), synthetic_flow(z3, 4, "classes"))


def test_decouple_loss_zero_at_match_and_alpha_endpoints():
    z = _features(4, 2, 8)
    mu = class_centres(z, 4)
    for alpha in (0.0, 0.5, 1.0):
        assert decouple_loss(z, mu, alpha).item() < 1e-20
    other = mu + 1.0  # shifting every centre equally moves targets and non-targets alike
    assert decouple_loss(z, other, 1.0).item() == pytest.approx(1.0)
    assert decouple_loss(z, other, 0.0).item() == pytest.approx(1.0)


def test_sfm_loss_accepts_low_precision_features():
    z = _features(3, 2, 8)
    mu = class_centres(z, 3)
    assert abs(sfm_loss(z.to(torch.bfloat16), flow(mu).float()).item()) < 2e-2


# ---- anchored SFM (losses.anchor_loss, equation (3))


def _centres(c=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, d, generator=g, dtype=torch.float64)


def test_anchor_is_zero_on_the_real_centres_and_sees_a_common_shift():
    mu = _centres()
    f = flow(mu)
    ipc = 3
    z = mu.repeat_interleave(ipc, dim=0)  # every synthetic image on its class centre
    assert abs(float(anchor_loss(z, f, mu, beta=1.0))) < 1e-12
    shift = torch.full((1, mu.shape[1]), 0.7, dtype=torch.float64)
    assert abs(float(sfm_loss(z + shift, f))) < 1e-12  # plain SFM: blind to the shift
    shifted = float(anchor_loss(z + shift, f, mu, beta=1.0))
    assert shifted > 0.01
    # the anchor's value: beta ||t||^2 / d2
    assert abs(shifted - float(shift.pow(2).sum() / centre_separation(mu))) < 1e-9
    # a common scale: also invisible to SFM, not to the anchor
    assert abs(float(sfm_loss(2 * z, flow(mu)))) < 1e-12 and float(anchor_loss(2 * z, f, mu, 1.0)) > 0.01


def test_anchor_is_scale_free():
    mu = _centres(seed=1)
    z = mu.repeat_interleave(2, dim=0) + 0.3 * torch.randn(
        10, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    a = anchor_loss(z, flow(mu), mu, beta=0.5)
    b = anchor_loss(10 * z, flow(10 * mu), 10 * mu, beta=0.5)
    assert abs(float(a - b)) < 1e-10


def test_anchor_pixel_gradient_matches_finite_differences():
    """d L_anchor / d pixels through a small differentiable 'backbone' (conv + pooling), float64."""
    g = torch.Generator().manual_seed(3)
    conv = torch.nn.Conv2d(3, 6, 3).double()
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    mu = torch.randn(3, 6, generator=g, dtype=torch.float64)
    f = flow(mu)

    def loss(pixels):
        z = torch.tanh(conv(pixels)).mean(dim=(2, 3))  # (N, 6) features
        return anchor_loss(z, f, mu, beta=0.7)

    pixels = torch.rand(6, 3, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)  # IPC 2, 3 classes
    assert torch.autograd.gradcheck(loss, (pixels,), eps=1e-6, atol=1e-6, rtol=1e-4)
