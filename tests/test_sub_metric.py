"""sfm_sub's whitened per-image metric (subcentres.whitening): its scale, what it weighs, the loss
it enters, and its validation."""

import numpy as np
import pytest
import torch

from edgedd.distillation.losses import centre_separation, flow, subcentre_loss
from edgedd.distillation.subcentres import whitening


def _classes(seed=0, n=400, c=2):
    """Features with a within-class spread of sd 10 along dim 0, 1 along dim 1 and 0.1 along dim 2."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % c
    x = g.normal(size=(n, 3)) * np.array([10.0, 1.0, 0.1]) + labels[:, None] * 5.0
    return x, labels


def test_whitening_is_symmetric_and_keeps_the_real_residuals_scale():
    x, y = _classes()
    m = whitening(x, y, 2, eps=0.05).double().numpy()
    np.testing.assert_allclose(m, m.T, atol=1e-9)
    r = x - np.stack([x[y == c].mean(0) for c in range(2)])[y]
    np.testing.assert_allclose(((r @ m) ** 2).sum(1).mean(), (r**2).sum(1).mean(), rtol=1e-5)


def test_whitening_weighs_a_step_along_a_direction_real_images_barely_vary_in_more():
    x, y = _classes()
    m = whitening(x, y, 2, eps=0.05).double().numpy()
    big, small = np.array([1.0, 0, 0]), np.array([0, 0, 1.0])
    assert np.linalg.norm(small @ m) > 5 * np.linalg.norm(big @ m)  # Euclidean: equal
    # the floor bounds it: eps * mean eigenvalue under the smallest one
    floored = whitening(x, y, 2, eps=10.0).double().numpy()
    assert np.linalg.norm(small @ floored) / np.linalg.norm(big @ floored) < 1.5


def test_subcentre_loss_with_a_metric_is_the_metric_distance():
    g = torch.Generator().manual_seed(0)
    z, t = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    mu = torch.randn(3, 3, generator=g, dtype=torch.float64) * 3
    m = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    got = subcentre_loss(z, flow(mu), mu, t, 0.0, 1.0, metric=m) - subcentre_loss(z, flow(mu), mu, t, 0.0, 0.0)
    torch.testing.assert_close(got, ((z - t) @ m).pow(2).sum(1).mean() / centre_separation(mu))
    eye = subcentre_loss(z, flow(mu), mu, t, 1.0, 1.0, metric=torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(eye, subcentre_loss(z, flow(mu), mu, t, 1.0, 1.0))


@pytest.mark.parametrize("field,value", [("sub_metric", "mahalanobis"), ("sub_whiten_eps", 0.0)])
def test_bad_sub_metric_settings_are_refused(field, value):
    from edgedd.core.config import DistillConfig
    from edgedd.core.errors import EdgeddError
    from edgedd.distillation.pipeline import validate

    with pytest.raises(EdgeddError):
        validate(DistillConfig(method="sfm_sub", **{field: value}))
