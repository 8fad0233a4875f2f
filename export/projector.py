"""The host's reference Classifier-Inheritance projector (METHOD.md, Stage III), trained in torch.

P = Linear(D_B, D_A) fitted by MSE(P(phi_B(v)), phi_A(v)) on augmented views v of the synthetic
images only (labels unused): Adam lr 1e-2 * batch / 256, batch min(100, N), cosine schedule,
``epochs`` passes of N samples. Here the views are the K cached flip + RRC views per image, one
drawn at random per sample, the same views the device re-renders for its closed-form fit.
"""

from __future__ import annotations

import torch


def train_projector(feats_b: torch.Tensor, targets_a: torch.Tensor, epochs: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """feats_b (N, K, D_B), targets_a (N, K, D_A) -> weight (D_A, D_B), bias (D_A,)."""
    n, k, d_b = feats_b.shape
    d_a = targets_a.shape[-1]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    proj = torch.nn.Linear(d_b, d_a)
    batch = min(100, n)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2 * batch / 256)
    steps_per_epoch = -(-n // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, batch):
            idx = perm[s : s + batch]
            view = torch.randint(0, k, (len(idx),), generator=g)
            loss = torch.nn.functional.mse_loss(proj(feats_b[idx, view]), targets_a[idx, view])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return proj.weight.detach().clone(), proj.bias.detach().clone()
