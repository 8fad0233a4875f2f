"""Linear Gradient Matching (LGM), the baseline SFM replaces (METHOD.md, "LGM").

Each step draws a fresh random linear head (W ~ N(0, 0.01^2), b = 0) and matches the gradient of
the cross-entropy w.r.t. (W, b) on a real batch against the same gradient on the synthetic set:

    g(z, y) = d CE(z W^T + b, y) / d(W, b) = ( (P - Y)^T z / B ,  mean(P - Y) ),  P = softmax(z W^T + b)
    L = 1 - cos( g(z_real, y_real), g(z_syn, y_syn) )                                   (4)

The real side needs no graph; the synthetic side keeps one (create_graph) so L back-propagates
through the gradient, the backbone and the augmentation into the pyramid.

Why SFM works (the paper's argument): with W ~ N(0, s^2) small, P ~ 1/C and for a class-balanced
batch E[g_W][c] = (1/C) (mean_k m_k - m_c) = (C - 1)/C^2 * F[c], the statistical flow of
``edgedd.distillation.losses``. LGM estimates that expectation from one noisy head and one real batch per step;
SFM uses it exactly. ``tests/test_lgm.py`` checks this numerically.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgedd.host.rng import torch_generator


def random_head(
    num_classes: int, dim: int, gen: torch.Generator, std: float = 0.01
) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(num_classes, dim, generator=gen, device=gen.device) * std
    b = torch.zeros(num_classes, device=gen.device)
    return w.requires_grad_(True), b.requires_grad_(True)


def head_gradient(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    """Flattened d CE / d(W, b), by autograd (a graph through z when create_graph)."""
    loss = F.cross_entropy(z @ w.T + b, y)
    gw, gb = torch.autograd.grad(loss, [w, b], create_graph=create_graph)
    return torch.cat([gw.flatten(), gb.flatten()])


def lgm_loss(
    z_syn: torch.Tensor,
    y_syn: torch.Tensor,
    z_real: torch.Tensor,
    y_real: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> torch.Tensor:
    """Equation (4)."""
    g_real = head_gradient(z_real.detach().to(w.dtype), y_real, w, b, create_graph=False).detach()
    g_syn = head_gradient(z_syn.to(w.dtype), y_syn, w, b, create_graph=True)
    return 1 - F.cosine_similarity(g_real, g_syn, dim=0)


class StepBatches:
    """Batch sampler for the real images: step s draws ``batch`` indices uniformly (with
    replacement) from the stream ("lgm-batch", seed, s), so a resumed run sees the same batches.
    Like the reference, batches are not class-balanced."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int):
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            g = torch_generator("lgm-batch", self.seed, step)
            yield torch.randint(self.n, (self.batch,), generator=g).tolist()
