"""The SFM loss gradient w.r.t. the synthetic pixels agrees with finite differences, through the
real augmentation (fixed views and noise) and a real timm backbone, in float64."""

import torch

from edgedd.backbones.loader import load_backbone
from edgedd.core.config import AugmentConfig
from edgedd.distillation.losses import flow, sfm_loss
from edgedd.host.augment import apply_augment, normalize, sample_augment


def test_sfm_pixel_gradient_matches_finite_difference():
    model, info = load_backbone("test_vit", "random", input_size=16, resize_size=20, seed=1)
    model = model.double()
    c, ipc = 3, 2
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(c * ipc, 3, 20, 20, generator=g, dtype=torch.float64) * 0.8 + 0.1
    params = sample_augment(c * ipc, AugmentConfig(noise_p=1.0), 16, g, dtype=torch.float64)  # fixed views and noise
    flow_real = flow(torch.randn(c, info.num_features, generator=g, dtype=torch.float64))
    pp = info.preprocess

    def loss_fn(x):
        return sfm_loss(model(normalize(apply_augment(x, params, 16), pp.mean, pp.std)), flow_real)

    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(x), x)
    assert grad.abs().max() > 0
    eps = 1e-6
    for k in range(4):
        d = torch.randn(x0.shape, generator=torch.Generator().manual_seed(100 + k), dtype=torch.float64)
        d /= d.norm()
        with torch.no_grad():
            numeric = (loss_fn(x0 + eps * d) - loss_fn(x0 - eps * d)) / (2 * eps)
        analytic = (grad * d).sum()
        torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-9)
