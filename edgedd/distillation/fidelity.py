"""Where the synthetic features land, measured against Stage I's real statistics.

The SFM loss is a cosine between flows, differences of class centres (``losses.py``): it cannot
see a shift of every synthetic centre by one vector, nor a common scale. A probe trained on
synthetic features and tested on real ones pays for both. These figures make that visible.
Notation: mu_c real class centres (Stage I, phi_A centre crops), m_c synthetic class centres
(phi_A of the synthetic images' centre view), g the golden classifier.

    offset_c    = ||m_c - mu_c|| / d_bar,  d_bar = mean_{j != k} ||mu_j - mu_k||               (1)
    norm_ratio  = mean_c ||m_c|| / mean_c ||mu_c||                                            (2)
    golden top-1 of g on phi_A of the synthetic images: the centre view and augmented views   (3)

offset 0 means the synthetic centre sits on the real one; 1 means it is as far from it as two
real classes are from each other on average.
"""

from __future__ import annotations

import torch

from edgedd.core.config import AugmentConfig
from edgedd.host.augment import center_crop, render_views, sample_views
from edgedd.host.rng import torch_generator


def mean_pairwise_distance(centres: torch.Tensor) -> float:
    """d_bar of equation (1): mean distance between distinct real centres."""
    c = centres.shape[0]
    if c < 2:
        return float("nan")
    d = torch.cdist(centres.double(), centres.double())
    return float(d.sum() / (c * (c - 1)))


def landing(
    z_centre: torch.Tensor,
    z_views: torch.Tensor,
    labels: torch.Tensor,
    centres: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
) -> dict:
    """Equations (1)-(3). z_centre (N, D) and z_views (N * V, D) phi_A features of the synthetic
    images (views image-major), labels (N,), centres (C, D), golden weight (C, D) and bias (C,)."""
    z_centre, z_views, centres = z_centre.double().cpu(), z_views.double().cpu(), centres.double().cpu()
    labels = labels.cpu()
    c = centres.shape[0]
    m = torch.stack([z_centre[labels == k].mean(0) for k in range(c)])
    offsets = (m - centres).norm(dim=1) / mean_pairwise_distance(centres)
    w, b = weight.double().cpu(), bias.double().cpu()
    v = z_views.shape[0] // max(1, z_centre.shape[0])
    return {
        "centre_offset_mean": float(offsets.mean()),
        "centre_offset_per_class": [float(o) for o in offsets],
        "norm_ratio": float(m.norm(dim=1).mean() / centres.norm(dim=1).mean()),
        "golden_top1_centre_view": float(((z_centre @ w.T + b).argmax(1) == labels).double().mean()),
        "golden_top1_augmented_views": float(
            ((z_views @ w.T + b).argmax(1) == labels.repeat_interleave(v)).double().mean()
        ),
        "augmented_views": v,
    }


@torch.no_grad()
def synthetic_landing(
    encode,
    images: torch.Tensor,
    input_size: int,
    labels: torch.Tensor,
    centres: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    views: int = 8,
    seed: int = 0,
) -> dict:
    """:func:`landing` for synthetic pixels in [0, 1]; ``encode(x)`` maps views at ``input_size``
    to phi_A features. Augmented views: flip + random-resized crop (no noise), from ``seed``."""
    gen = torch_generator("landing", seed)
    z_centre = encode(center_crop(images, input_size))
    x = images.repeat_interleave(views, dim=0)
    z_views = encode(render_views(x, sample_views(x.shape[0], AugmentConfig(), gen), input_size))
    return landing(z_centre, z_views, labels, centres, weight, bias)
