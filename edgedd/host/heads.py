"""One trainer for every linear head edgedd fits on frozen features.

The golden classifier (Stage I), the ``normal`` and ``kd`` probes and the CI projector
(evaluation) and pack's reference projector are all a linear map h(z) = W z + b fitted on
features of augmented views. They differ only in the loss; this module owns how they are fitted.
Two recipes:

``reference``  METHOD.md: Adam(lr), cosine schedule over epochs * ceil(n / batch) steps, a fresh
               random order each epoch and one view per image per batch (drawn by a sampler). Its
               step budget and lr scale with the data: on small N it under-trains (at IPC 1 on 10
               classes lr = 1e-3 * 10 / 256 = 3.9e-5 for 1,000 steps ends at chance-level loss).

``converged``  the minimiser of the regularised objective over *all* cached views at once,

                   J(W', b') = mean_{i,v} loss(W' z'_iv + b', t_iv) + (lam / 2) * ||W'||_F^2      (1)

               on standardised features z' = (z - m) / sd (per dimension, over all rows), so lam
               is scale-free: multiplying every feature by k leaves the optimal logits unchanged.
               (1) is strictly convex in W' for CE and KD (lam > 0): full-batch L-BFGS with a
               strong-Wolfe line search reaches its unique optimum from any start, whatever N is,
               with no learning rate. For the MSE projector (1) is ridge regression, solved in
               closed form on centred features,

                   W^T = (Xc^T Xc + lam' I)^-1 Xc^T Yc,  b = mean(Y) - W mean(X),
                   lam' = lam * trace(Xc^T Xc) / D                                            (2)

               the same scaling as the device's fit (``edgedd.device.ridge.fit_ridge``).

Every fit returns a :class:`Fit`: the head and its training loss at the start and at the end, so a
head that did not train (its loss near its starting value) is visible, never silently reported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from edgedd.core.progress import Progress
from edgedd.device.ridge import PRIORS, residual

STALLED = 0.9  # a head whose final loss is above 0.9 x its starting loss did not train


@dataclass
class Fit:
    """A fitted head and how its training went."""

    head: torch.nn.Linear
    loss_start: float  # the objective (without the L2 term) at the head's initialisation
    loss_final: float  # ... after training (reference: mean over the last epoch; converged: at the optimum)
    steps: int  # optimiser steps (L-BFGS iterations; 0 for the closed form)

    @property
    def stalled(self) -> bool:
        return not self.loss_final < STALLED * self.loss_start

    def report(self) -> dict:
        return {
            "loss_start": self.loss_start,
            "loss_final": self.loss_final,
            "steps": self.steps,
            "stalled": self.stalled,
        }


# ----------------------------------------------------------------------------- losses


def ce_loss(labels: torch.Tensor) -> Callable:
    """Hard labels: CE(h(z_B), y). ``labels`` are per image; rows index images."""

    def loss(out: torch.Tensor, rows: torch.Tensor, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return F.cross_entropy(out, labels[rows.to(labels.device)])

    return loss


def kd_loss(labels: torch.Tensor, teacher: torch.nn.Module, temperature: float, alpha: float) -> Callable:
    """alpha T^2 KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) CE(s, y), s = h(z_B), t = teacher(z_A)
    of the same view (features (z_B, z_A)). T^2 keeps the soft term's gradient scale independent
    of T (Hinton et al.)."""

    def loss(out: torch.Tensor, rows: torch.Tensor, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(feats[1])
        kl = F.kl_div(F.log_softmax(out / temperature, dim=1), F.softmax(t / temperature, dim=1), reduction="batchmean")
        return alpha * temperature**2 * kl + (1 - alpha) * F.cross_entropy(out, labels[rows.to(labels.device)])

    return loss


def mse_loss(out: torch.Tensor, rows: torch.Tensor, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """CI projector: MSE(P(z_B), z_A) on features (z_B, z_A) of the same views; labels unused."""
    return F.mse_loss(out, feats[1])


# ----------------------------------------------------------------------------- heads


def new_probe(d_in: int, num_classes: int, gen: torch.Generator, device) -> torch.nn.Linear:
    """Linear(D, C), W ~ N(0, 0.01^2), b = 0 (METHOD.md), drawn from ``gen``."""
    head = torch.nn.Linear(d_in, num_classes)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.01)
        head.bias.zero_()
    return head.to(device)


def new_projector(d_b: int, d_a: int, gen: torch.Generator, device) -> torch.nn.Linear:
    """Linear(D_B, D_A) with torch's default init, U(-1/sqrt(D_B), 1/sqrt(D_B)), drawn from ``gen``."""
    proj = torch.nn.Linear(d_b, d_a)
    bound = 1 / math.sqrt(d_b)
    with torch.no_grad():
        proj.weight.copy_((torch.rand(proj.weight.shape, generator=gen) * 2 - 1) * bound)
        proj.bias.copy_((torch.rand(proj.bias.shape, generator=gen) * 2 - 1) * bound)
    return proj.to(device)


# ----------------------------------------------------------------------------- reference recipe


class Sampler(Protocol):
    """Per batch of image indices: features of one view per image, one tensor per encoder.
    ``epoch(gen)`` draws what an epoch needs (the order of the images and, for cached views, the
    view of each image) and returns the order."""

    n: int

    def epoch(self, gen: torch.Generator) -> torch.Tensor: ...

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, ...]: ...


def train_reference(
    head: torch.nn.Linear,
    sampler: Sampler,
    loss_fn: Callable,
    epochs: int,
    batch: int,
    lr: float,
    gen: torch.Generator,
    bar: Progress | None = None,
    tag: str = "",
) -> Fit:
    """METHOD.md's recipe: Adam(lr), cosine schedule over epochs * ceil(n / batch) steps, a fresh
    random order every epoch. ``loss_fn(out, idx, features)`` gets the batch's image indices.
    The starting loss is the first epoch's mean, the final loss the last epoch's."""
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    steps = epochs * math.ceil(sampler.n / batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    device = head.weight.device
    first = last = float("nan")
    for epoch in range(epochs):
        perm = sampler.epoch(gen)
        total = 0.0
        for s in range(0, sampler.n, batch):
            idx = perm[s : s + batch]
            feats = tuple(f.to(device) for f in sampler.batch(idx, gen))
            loss = loss_fn(head(feats[0]), idx, feats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        last = total / sampler.n
        first = last if epoch == 0 else first
        if bar is not None:
            bar.update(1, run=tag, loss=last)
    return Fit(head, first, last, steps)


# ----------------------------------------------------------------------------- converged recipe


def _chunks(n: int, chunk: int):
    return [(s, min(s + chunk, n)) for s in range(0, n, chunk)]


def _rows(x, s: int, e: int, device) -> torch.Tensor:
    """Rows s..e of a (n, V, D) tensor or numpy array (a memmap reads only those rows), flattened
    to (rows * V, D) on ``device``."""
    part = x[s:e]
    part = torch.as_tensor(np.ascontiguousarray(part)) if isinstance(part, np.ndarray) else part
    return part.reshape(-1, part.shape[-1]).to(device=device, dtype=torch.float32)


def fit_lbfgs(
    head: torch.nn.Linear,
    feats: tuple,
    loss_fn: Callable,
    l2: float,
    max_iter: int = 500,
    chunk: int = 8192,
    warm_start: torch.nn.Linear | None = None,
) -> Fit:
    """Equation (1) by full-batch L-BFGS; the result is written into ``head``.

    ``feats`` are (n, V, D_k) arrays (tensors or memmaps), one per encoder; image i's V views are
    rows i*V .. i*V + V - 1, and ``loss_fn(out, image_rows, features)`` gets the image index of
    every row. Loss and gradient are accumulated over chunks of images, so memory is bounded by
    ``chunk`` rows, not by n. The head's inputs are standardised per dimension, x' = (x - m) / sd
    over all rows, and the L2 term is (lam / 2) ||W'||^2 on the weights of x': scale-free, and
    L-BFGS converges in far fewer iterations than on raw features. W = W' / sd, b = b' - W m
    fold it back. The starting loss is measured at ``head`` as given; with ``warm_start`` the
    optimiser then starts from that head (the optimum is unique: this changes the time to reach
    it, not where it is)."""
    device = head.weight.device
    n, v = feats[0].shape[:2]
    parts = _chunks(n, max(1, chunk // v))
    rows_total = n * v
    d = feats[0].shape[-1]
    s1 = torch.zeros(d, dtype=torch.float64, device=device)
    s2 = torch.zeros(d, dtype=torch.float64, device=device)
    for s, e in parts:
        x = _rows(feats[0], s, e, device).double()
        s1 += x.sum(0)
        s2 += x.pow(2).sum(0)
    mean = s1 / rows_total
    sd = (s2 / rows_total - mean.pow(2)).clamp_min(0).sqrt()
    sd = torch.where(
        sd > 1e-12 * max(1.0, float(sd.max())), sd, torch.ones_like(sd)
    )  # constant inputs: leave as they are
    mean, sd = mean.float(), sd.float()

    def objective(w, b, with_grad: bool) -> float:
        total = 0.0
        for s, e in parts:
            fs = tuple(_rows(f, s, e, device) for f in feats)
            rows = torch.arange(s, e).repeat_interleave(v)
            # ((x - m) / sd) W'^T + b' with the standardisation folded into the small weights:
            # x (W' / sd)^T + (b' - (W' / sd) m), so no standardised copy of the rows is made
            w_raw = w / sd
            part = loss_fn(fs[0] @ w_raw.T + (b - w_raw @ mean), rows, fs) * (len(rows) / rows_total)
            if with_grad:
                part.backward()
            total += float(part.detach())
        return total

    def to_std(h: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        w = h.weight.detach().float() * sd
        return w.clone().requires_grad_(True), (
            h.bias.detach().float() + h.weight.detach().float() @ mean
        ).clone().requires_grad_(True)

    w, b = to_std(head)
    with torch.no_grad():
        start = objective(w, b, False)
    if warm_start is not None:
        w, b = to_std(warm_start)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad(set_to_none=True)
        data = objective(w, b, True)
        reg = 0.5 * l2 * w.pow(2).sum()
        reg.backward()
        return torch.tensor(data + float(reg.detach()))

    opt.step(closure)
    with torch.no_grad():
        final = objective(w, b, False)
        head.weight.copy_(w / sd)
        head.bias.copy_(b - (w / sd) @ mean)
    iters = int(opt.state[opt._params[0]].get("n_iter", 0))
    return Fit(head, start, final, iters)


def fit_ridge(head: torch.nn.Linear, x, y, l2: float, chunk: int = 8192, prior: str = "none") -> Fit:
    """Equation (2): the MSE projector in closed form (float64), x (n, V, D_B), y (n, V, D_A).
    ``prior="identity"`` (D_B = D_A): shrink towards I instead of 0, i.e. (2) on y - x, plus I
    (edgedd.device.ridge eq. 4, for B with A's weights)."""
    device = head.weight.device
    n, v, d = x.shape
    parts = _chunks(n, max(1, chunk // v))
    sx = torch.zeros(d, dtype=torch.float64, device=device)
    sy = torch.zeros(y.shape[-1], dtype=torch.float64, device=device)
    if prior not in PRIORS or (prior == "identity" and d != y.shape[-1]):
        raise ValueError(f"projector prior {prior!r} does not fit D_B = {d}, D_A = {y.shape[-1]}")

    def rows(s: int, e: int) -> tuple[torch.Tensor, torch.Tensor]:  # x's rows (read once) and their targets (residual)
        xs = _rows(x, s, e, device).double()
        return xs, residual(xs, _rows(y, s, e, device).double(), prior)

    for s, e in parts:
        xs, t = rows(s, e)
        sx += xs.sum(0)
        sy += t.sum(0)
    mx, my = sx / (n * v), sy / (n * v)
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    cross = torch.zeros(d, y.shape[-1], dtype=torch.float64, device=device)
    for s, e in parts:
        xs, t = rows(s, e)
        xc = xs - mx
        gram += xc.T @ xc
        cross += xc.T @ (t - my)
    lam = l2 * max(float(torch.trace(gram)), 1e-12) / d
    wt = torch.linalg.solve(gram + lam * torch.eye(d, dtype=torch.float64, device=device), cross)

    def mse() -> float:
        total = 0.0
        for s, e in parts:
            total += float(F.mse_loss(head(_rows(x, s, e, device)), _rows(y, s, e, device), reduction="sum"))
        return total / (n * v * y.shape[-1])

    with torch.no_grad():
        start = mse()
        head.weight.copy_((wt.T + (torch.eye(d, dtype=wt.dtype, device=device) if prior == "identity" else 0)).float())
        head.bias.copy_((my - mx @ wt).float())
        final = mse()
    return Fit(head, start, final, 0)
