"""The host's Classifier-Inheritance projector for a bundle (METHOD.md, Stage III), fitted by
edgedd's one linear-head trainer (``edgedd.host.heads``).

P = Linear(D_B, D_A) fitted by MSE(P(phi_B(v)), phi_A(v)) on the K cached views v of every
synthetic image (its centre crop, then flip + crops: edgedd.host.augment.device_views; labels
unused): the views the device re-renders for its own fit.

``converged`` (default)  closed-form ridge at the relative strength ``ridge`` (heads.py eq. 2; pack
    passes the one edgedd.device.ridge.select_ridge picks): the same fit the device computes in
    numpy, so the packed projector is what a device with B gets anyway.
``reference``  METHOD.md: Adam lr 1e-2 * batch / 256, batch min(100, N), cosine schedule,
    ``epochs`` passes of N samples, one of the K views drawn per sample.
"""

from __future__ import annotations

import torch

from edgedd.core.config import RECIPES
from edgedd.core.errors import EdgeddError
from edgedd.device.ridge import DEFAULT_RIDGE
from edgedd.host.heads import fit_ridge, mse_loss, new_projector, train_reference
from edgedd.host.rng import torch_generator


class _Views:
    """The reference recipe's sampler over (N, K, D) cached features: one view per image per epoch."""

    def __init__(self, feats: tuple[torch.Tensor, ...]):
        self.feats, self.n, self.k = feats, feats[0].shape[0], feats[0].shape[1]

    def epoch(self, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(self.n, generator=gen)

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        view = torch.randint(0, self.k, (len(idx),), generator=gen)
        return tuple(f[idx, view] for f in self.feats)


def train_projector(
    feats_b: torch.Tensor,
    targets_a: torch.Tensor,
    epochs: int = 1000,
    seed: int = 0,
    recipe: str = "converged",
    ridge: float = DEFAULT_RIDGE,
    prior: str = "none",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """feats_b (N, K, D_B), targets_a (N, K, D_A) -> weight (D_A, D_B), bias (D_A,), Fit.report().
    ``prior`` (edgedd.device.ridge): what the converged fit shrinks towards; the reference recipe
    is METHOD.md's Adam from a random start, as written (no prior)."""
    if recipe not in RECIPES:
        raise EdgeddError(f"unknown projector recipe {recipe!r}", f"choose one of {', '.join(RECIPES)}")
    gen = torch_generator("projector", seed)
    proj = new_projector(feats_b.shape[-1], targets_a.shape[-1], gen, "cpu")
    if recipe == "converged":
        fit = fit_ridge(proj, feats_b, targets_a, ridge, prior=prior)
    else:
        batch = min(100, feats_b.shape[0])
        fit = train_reference(proj, _Views((feats_b, targets_a)), mse_loss, epochs, batch, 1e-2 * batch / 256, gen)
    return fit.head.weight.detach().clone(), fit.head.bias.detach().clone(), fit.report()
