"""A further candidate for ``edgedd adapt``: a ridge probe on the local images' phi_B, alone or mixed
with the views-only fit's logits, expressed exactly as a projector (numpy only).

Why. Fit (5) moves the views-only projector P0 only along directions the views' metric allows; when
a few real images per class through B carry more than the synthetic views do (a backbone pair far
apart), no weight w makes (5) approach a classifier fitted on those images themselves. The probe is
that classifier, and the mix keeps what the views know:

    z(x) = (z0(x) + a g (W_l x + b_l)) / (1 + a)                                            (6)

z0 = W_c (P0 x + p0) + b_c: the views-only fit's logits; (W_l, b_l): ridge phi_B -> one-hot label
on the local images, as (3) with one-hot targets; g = std(z0 across classes) / std(one-hot):
puts the probe's logits on z0's scale, so the relative weight a is scale-free; a = inf: the probe
alone, z = g (W_l x + b_l). The mix of logits is the mix of log-probabilities up to a per-image
constant, so it is late fusion log p0 + a log p_l; dividing by 1 + a changes no answer and keeps
the logits' spread, so the probabilities predict reports stay as confident as z0's, not 1 + a times.

Exactly a projector. With W_c of full row rank C (C <= D_A), W_c W_c^+ = I_C, so

    P = (P0 + a g W_c^+ W_l) / (1 + a),  p = (p0 + W_c^+ (a g b_l - a b_c)) / (1 + a)    (a finite)
    P = g W_c^+ W_l,                     p = W_c^+ (g b_l - b_c)                          (a = inf)

give W_c (P x + p) + b_c = z(x) for every x: the sidecar's projector and the golden classifier
express (6) without a head of their own. A rank-deficient W_c cannot, and the candidate is skipped.

(a, the probe's strength) are chosen by the same grouped folds over the local images as (5): the
probe is refitted on the training folds (its dual form, one n x n eigendecomposition per fold serves
every strength) and predicts the held-out fold. With one image per class each held-out image's
class is absent from the probe's fit, so the probe can only lose there: the conservative fallback.
"""

from __future__ import annotations

import numpy as np

from .ridge import COARSE_RIDGE_GRID

MIX_GRID = (0.25, 0.5, 1.0, 2.0, 4.0, np.inf)  # relative weight a of the probe in (6); inf: the probe alone


def dual_ridge(x: np.ndarray, y: np.ndarray, r_grid) -> tuple:
    """Ridge x -> y as (3) (strength r * tr(Xc^T Xc) / D, as fit_ridge) in its dual form, for every
    r at once: returns predict(x_new) -> {r: (n_new, C)} and weights(r) -> (W, b)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    kap, u = np.linalg.eigh(xc @ xc.T)
    kap = np.clip(kap, 0.0, None)
    scale = max(float(kap.sum()), 1e-12) / x.shape[1]
    uy = u.T @ yc

    def alpha(r):
        return u @ (uy / (kap + r * scale)[:, None])  # (n, C): (Xc Xc^T + lam I)^-1 Yc

    def predict(xn):
        k = (xn - mx) @ xc.T
        return {r: k @ alpha(r) + my for r in r_grid}

    def weights(r):
        w = alpha(r).T @ xc
        return w, my - w @ mx

    return predict, weights


def expressible(wc: np.ndarray) -> np.ndarray | None:
    """W_c^+ when W_c W_c^+ = I (full row rank, so (6) is exactly a projector), else None."""
    pinv = np.linalg.pinv(wc)
    return pinv if np.allclose(wc @ pinv, np.eye(len(wc)), atol=1e-6) else None


def probe_scale(z0: np.ndarray, classes: int) -> float:
    """g of (6): the views-only logits' spread across classes (each image's mean removed: a shift
    common to all classes changes no probability) over a one-hot target's, on the local images."""
    onehot_sd = np.sqrt(classes - 1.0) / classes
    return max(float((z0 - z0.mean(1, keepdims=True)).std()), 1e-12) / onehot_sd


def mix(z0: np.ndarray, zl: np.ndarray, a: float, g: float) -> np.ndarray:
    return g * zl if np.isinf(a) else (z0 + a * g * zl) / (1.0 + a)


def cross_validate_probe(xl, yl, z0, fold, classes, r_grid=COARSE_RIDGE_GRID, a_grid=MIX_GRID) -> dict:
    """Held-out logits of (6) for every (a, r) over the folds: {(a, r): (n, C)}; z0: the views-only
    fit's logits of the local images (they use no label, so no fold leaks through them)."""
    xl = xl.astype(np.float64)
    onehot = np.eye(classes)[yl]
    g = probe_scale(z0, classes)
    out = {(a, r): np.empty_like(z0, dtype=np.float64) for a in a_grid for r in r_grid}
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        predict, _ = dual_ridge(xl[tr], onehot[tr], r_grid)
        zl = predict(xl[te])
        for a in a_grid:
            for r in r_grid:
                out[(a, r)][te] = mix(z0[te], zl[r], a, g)
    return out


def probe_projector(xl, yl, z0, classes, a, r, w0, b0, wc, bc, pinv) -> tuple[np.ndarray, np.ndarray]:
    """(6) fitted on every local image at (a, r), as the projector (weight (D_A, D_B), bias) above."""
    _, weights = dual_ridge(xl.astype(np.float64), np.eye(classes)[yl], (r,))
    wl, bl = weights(r)
    g = probe_scale(z0, classes)
    if np.isinf(a):
        w, b = g * pinv @ wl, pinv @ (g * bl - bc)
    else:
        w = (w0.astype(np.float64) + a * g * pinv @ wl) / (1.0 + a)
        b = (b0.astype(np.float64) + a * pinv @ (g * bl - bc)) / (1.0 + a)
    return w.astype(np.float32), b.astype(np.float32)
