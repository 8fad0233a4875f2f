"""The SFM equations: flow rows sum to zero, the loss vanishes at matched centres, the reference
denominator is only equivalent at IPC = 1, and the decoupled ablation behaves likewise."""

import pytest
import torch

from edgedd.losses import class_centres, decouple_loss, flow, sfm_loss, synthetic_flow


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
