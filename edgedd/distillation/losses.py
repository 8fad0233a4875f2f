"""Matching losses of Statistical Flow Matching (METHOD.md, Stage II).

Notation: C classes, IPC synthetic images per class stored class-major (image i has class
i // IPC), features z_i in R^D, real class centres mu_c, synthetic class centres m_c.

Statistical flow of class c: the step from its centre to the mean of the other centres,

    F[c] = (sum_k mu_k - mu_c) / (C - 1) - mu_c                                   (1)

Summed over c: (C*S - S) / (C - 1) - S = 0, so the rows of a flow matrix sum to zero.

SFM loss: one cosine between the flattened C x D matrices,

    L = 1 - cos(vec F_real, vec F_syn)                                            (2)

It is zero whenever m_c = mu_c for every c (and, being a cosine, also when m is any positive
scaling of mu about the mean centre: SFM matches the *geometry* of the class centres).

What (2) cannot see. Shift every synthetic centre by one vector t: m_c -> m_c + t. Then
sum_k m_k -> sum_k m_k + C t, and (1) gives (S + C t - m_c - t) / (C - 1) - m_c - t = F_syn[c]:
the flow, hence the loss, is unchanged. Scale them about the origin, m -> k m (k > 0): F_syn -> k
F_syn, cos unchanged. So SFM can place the synthetic features anywhere along those directions,
and a probe trained on them is then tested on real features that lie elsewhere.

Anchored SFM (``sfm_anchor``, edgedd's addition): the flow cosine plus a centre anchor,

    L_anchor = 1 - cos(vec F_real, vec F_syn) + beta * (1 / C) sum_c ||m_c - mu_c||^2 / d2,    (3)
    d2 = mean_{j != k} ||mu_j - mu_k||^2 = (2 C / (C - 1)) * mean_c ||mu_c - mu_bar||^2

The anchor is the target-class centre matching of ``sfm_decouple`` (alpha = 1), measured in units
of the real classes' squared separation so that beta is scale-free (a backbone whose features are
10x larger gives the same loss). It keeps SFM's cost: mu_c and d2 are constants from Stage I, no
real image or classifier enters the step, one augmentation pass. (3) is 0 iff m_c = mu_c for all
c (both terms are >= 0 and the anchor vanishes only there); a common shift t gives beta ||t||^2 / d2
> 0 where (2) stays 0; a common scale k gives beta (k - 1)^2 mean_c ||mu_c||^2 / d2 > 0. The
cosine keeps the direction of every class's flow in the gradient when the anchor is small, where
the anchor alone (squared distances dominated by the largest, most common directions) would let
the class-discriminative differences lag.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgedd.core.errors import EdgeddError


def class_centres(z: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C*IPC, D) class-major features -> (C, D) per-class means."""
    n, d = z.shape
    if n % num_classes:
        raise EdgeddError(
            f"{n} synthetic features do not split into {num_classes} classes", "keep the class-major layout"
        )
    return z.view(num_classes, n // num_classes, d).mean(dim=1)


def non_target_centres(centres: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """(sum_k c_k - c_c) / (C - 1) per class; ``denominator`` overrides C - 1."""
    c = centres.shape[0]
    den = (c - 1) if denominator is None else denominator
    return (centres.sum(dim=0, keepdim=True) - centres) / den


def flow(centres: torch.Tensor, denominator: float | None = None) -> torch.Tensor:
    """Equation (1): the statistical flow matrix of a set of class centres."""
    return non_target_centres(centres, denominator) - centres


def synthetic_flow(z: torch.Tensor, num_classes: int, mode: str = "classes") -> torch.Tensor:
    """F_syn from synthetic features. ``mode="reference"`` divides by N - 1 (N images), as the
    reference code does; that equals (1) only at IPC = 1."""
    m = class_centres(z, num_classes)
    if mode == "classes":
        return flow(m)
    if mode == "reference":
        return flow(m, denominator=z.shape[0] - 1)
    raise EdgeddError(f"unknown flow denominator {mode!r}", "use classes or reference")


def sfm_loss(z: torch.Tensor, flow_real: torch.Tensor, mode: str = "classes") -> torch.Tensor:
    """Equation (2), computed in float32 or wider whatever the feature dtype."""
    f_syn = synthetic_flow(z.float() if z.dtype in (torch.float16, torch.bfloat16) else z, flow_real.shape[0], mode)
    return 1 - F.cosine_similarity(flow_real.to(f_syn.dtype).flatten(), f_syn.flatten(), dim=0)


def decouple_loss(z: torch.Tensor, centres_real: torch.Tensor, alpha: float) -> torch.Tensor:
    """``sfm_decouple``: alpha * MSE(m, mu) + (1 - alpha) * MSE(non-target(m), non-target(mu)).

    alpha = 1 is target-class centre matching (TCDD), alpha = 0 non-target matching (NCDD).
    """
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    mu = centres_real.to(z.dtype)
    m = class_centres(z, mu.shape[0])
    return alpha * F.mse_loss(m, mu) + (1 - alpha) * F.mse_loss(non_target_centres(m), non_target_centres(mu))


def centre_separation(centres_real: torch.Tensor) -> torch.Tensor:
    """d2 of equation (3): the mean squared distance between distinct real centres."""
    c = centres_real.shape[0]
    spread = (centres_real - centres_real.mean(dim=0, keepdim=True)).pow(2).sum(dim=1).mean()
    return spread * (2 * c / max(c - 1, 1))


def anchor_loss(
    z: torch.Tensor, flow_real: torch.Tensor, centres_real: torch.Tensor, beta: float, mode: str = "classes"
) -> torch.Tensor:
    """Equation (3): the SFM cosine plus beta times the scale-free centre anchor."""
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    mu = centres_real.to(z.dtype)
    m = class_centres(z, mu.shape[0])
    anchor = (m - mu).pow(2).sum(dim=1).mean() / centre_separation(mu)
    return sfm_loss(z, flow_real, mode) + beta * anchor


def subcentre_loss(
    z: torch.Tensor,
    flow_real: torch.Tensor,
    centres_real: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    gamma: float,
    mode: str = "classes",
) -> torch.Tensor:
    """``sfm_sub``: equation (3) plus gamma times the scale-free per-image term

        gamma * (1 / N) sum_i ||z_i - s_i||^2 / d2                                            (4)

    with s_i image i's own target (one of IPC k-means sub-centres of its class, edgedd.distillation.subcentres).
    (3) sees only each class's mean, so any arrangement of a class's images around it scores the
    same and they collapse onto one prototype; (4) is 0 only when every image sits on its own
    sub-centre, so the IPC images spread over the class as the real features do."""
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    t = targets.to(z.dtype)
    per_image = (z - t).pow(2).sum(dim=1).mean() / centre_separation(centres_real.to(z.dtype))
    return anchor_loss(z, flow_real, centres_real, beta, mode) + gamma * per_image


@dataclass(frozen=True)
class ProbeTargets:
    """The real side of ``ridge_probe_loss``, fixed for a run (built once by ``probe_targets``):
    the real features' mean and floored sd, the standardised features with their ones column
    R' = [(R - mean) / sd, 1] (n x (D + 1)) and the centred one-hot targets Y_y - 1/C (n x C)."""

    mean: torch.Tensor
    sd: torch.Tensor
    r: torch.Tensor
    y: torch.Tensor

    @property
    def num_classes(self) -> int:
        return self.y.shape[1]


def probe_targets(real: torch.Tensor, real_labels: torch.Tensor, num_classes: int) -> ProbeTargets:
    """``ProbeTargets`` of the (n, D) real centre-crop features and their labels (one no-grad pass
    before Stage II gives them), in their own dtype and device."""
    real = real.float() if real.dtype in (torch.float16, torch.bfloat16) else real
    # The sd is floored at a tenth of its median: some dimensions barely vary on the real centre crops
    # (sd ~1e-6), and a synthetic view that activates one slightly would, divided by that sd, rule
    # X X^T (and lam with it), so that the probe fits nothing but that dimension.
    sd = real.std(0, keepdim=True)
    sd = torch.maximum(sd, (0.1 * sd.median()).clamp_min(1e-6))
    mean = real.mean(0, keepdim=True)
    r = torch.cat([(real - mean) / sd, torch.ones(real.shape[0], 1, dtype=real.dtype, device=real.device)], 1)
    y = F.one_hot(real_labels.to(real.device).long(), num_classes).to(real.dtype) - 1 / num_classes
    return ProbeTargets(mean=mean, sd=sd, r=r, y=y)


def ridge_probe_loss(z: torch.Tensor, probe: ProbeTargets, ridge: float) -> torch.Tensor:
    """``sfm_probe``'s term: how well a ridge probe fitted on the synthetic features classifies real ones.

    With X = [standardised z, 1] (N x (D + 1)) and targets Y (one-hot, centred: Y - 1/C), the
    probe in its kernel (dual) form and its squared error on the real features R (standardised with
    the same constants, labels y; ``ProbeTargets``):

        W = X^T (X X^T + lam I)^-1 Y,   lam = ridge * trace(X X^T) / N                      (5)
        L_probe = (1 / n) sum_j ||[R_j, 1] W - Y_{y_j}||^2

    Differentiable in z: the images move so that what a linear head learns from them holds on the
    real data, the quantity the normal probe measures. The same W in its primal form,
    W = (X^T X + lam I)^-1 X^T Y, is a (D + 1) x (D + 1) solve instead of N x N; the smaller one is
    taken, so N = IPC x classes in the tens of thousands (ImageNet at IPC 10 and up) costs O(N D^2),
    not O(N^3) and an N x N matrix. The real side is constant (``probe_targets``, once a run).
    Standardising by the real features' mean and sd keeps lam's meaning across backbones."""
    z = z.float() if z.dtype in (torch.float16, torch.bfloat16) else z
    mean, sd, r, y_real = (t.to(device=z.device, dtype=z.dtype) for t in (probe.mean, probe.sd, probe.r, probe.y))
    n, c = z.shape[0], probe.num_classes
    x = torch.cat([(z - mean) / sd, torch.ones(n, 1, dtype=z.dtype, device=z.device)], 1)
    y_syn = F.one_hot(torch.arange(c, device=z.device).repeat_interleave(n // c), c).to(z.dtype) - 1 / c
    lam = ridge * x.pow(2).sum() / n  # ridge * mean diag(X X^T) = ridge * trace(X^T X) / N
    if n <= x.shape[1]:  # dual: N x N
        alpha = torch.linalg.solve(x @ x.T + lam * torch.eye(n, dtype=z.dtype, device=z.device), y_syn)
        pred = (r @ x.T) @ alpha
    else:  # primal: (D + 1) x (D + 1), the same W
        eye = torch.eye(x.shape[1], dtype=z.dtype, device=z.device)
        pred = r @ torch.linalg.solve(x.T @ x + lam * eye, x.T @ y_syn)
    return (pred - y_real).pow(2).sum(1).mean()
