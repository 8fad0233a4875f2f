"""The projector's closed-form fit, and its strength chosen on the synthetic set itself (numpy only).

    P = argmin_W ||Xc W^T - Yc||^2 + lam ||W||^2,   lam = r * tr(Xc^T Xc) / D_B          (3)

with Xc, Yc the centred phi_B(views), phi_A(views) and r the *relative* strength (scale-free).

Why choose r per bundle and backbone: with B = A a weak r lets P interpolate the views (the ideal P
is the identity) and the golden classifier does the rest. With B != A the K views of N images span
a sliver of B's feature space; a weak r fits that sliver exactly and extrapolates badly to real
images (measured, host-vit -> EfficientNet-Lite0 at IPC 10: top-1 25% at r = 1e-3, 52% at r = 1).
P is a regression, so the choice is a regression's: grouped F-fold cross-validation over *images*
(all views of an image in one fold, so held-out images are unseen, as real ones are), fit (3) on
the other images' views, and keep the r with the least squared error on the held-out images'
targets (ties: the stronger). Folds are round-robin within each class, F = min(5, smallest class),
so every class stays in every training fold: a held-out image of a class the fit never saw would
reward shrinking everything to the mean (measured at IPC 1, where no such split exists: there the
weak default r = 1e-3 stays, the strength evaluation used before).

Each fold costs one eigendecomposition, of Xc Xc^T (n x n) when there are fewer rows than features
and of Xc^T Xc (D x D) otherwise; every r then costs a matrix product:

    Xh_c W^T = Xh_c Xc^T U diag(1 / (s + lam)) U^T Yc      (Xc Xc^T = U diag(s) U^T, push-through)
    Xh_c W^T = Xh_c V diag(1 / (s + lam)) V^T Xc^T Yc      (Xc^T Xc = V diag(s) V^T)
"""

from __future__ import annotations

import numpy as np

RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_RIDGE = 1e-3  # when no split keeps every class in training (IPC 1)
FOLDS = 5


def fit_ridge(x: np.ndarray, y: np.ndarray, ridge: float = DEFAULT_RIDGE) -> tuple[np.ndarray, np.ndarray]:
    """Equation (3). x (n, D_B), y (n, D_A) -> W (D_A, D_B), b (D_A,), in float64 then float32."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * max(np.trace(gram), 1e-12) / gram.shape[0]
    wt = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    return wt.T.astype(np.float32), (my - mx @ wt).astype(np.float32)


def mse(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((x @ w.T + b - y) ** 2))


def objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float) -> float:
    """(3) per row for W, with W's best bias (the centred problem): what fit_ridge minimises at ``ridge``."""
    x, y, w = x.astype(np.float64), y.astype(np.float64), w.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    lam = ridge * max(float((xc * xc).sum()), 1e-12) / x.shape[1]
    return float((((xc @ w.T - yc) ** 2).sum() + lam * (w * w).sum()) / len(x))


def image_folds(labels: np.ndarray, folds: int = FOLDS) -> np.ndarray:
    """Fold of each image: round-robin within each class, offset by the class, so every fold mixes
    classes; with ``folds`` <= the smallest class every class is in every fold. No draws."""
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        fold[idx] = (np.arange(len(idx)) + int(c)) % folds
    return fold


def _fold_predictions(xtr: np.ndarray, ytr: np.ndarray, xh: np.ndarray, grid) -> list[np.ndarray]:
    """Held-out predictions of (3) fitted on (xtr, ytr), one array per relative strength in ``grid``."""
    mx, my = xtr.mean(0), ytr.mean(0)
    xc, yc, hc = xtr - mx, ytr - my, xh - mx
    n, d = xc.shape
    if n <= d:
        s, u = np.linalg.eigh(xc @ xc.T)
        left, right = hc @ xc.T @ u, u.T @ yc
    else:
        s, v = np.linalg.eigh(xc.T @ xc)
        left, right = hc @ v, v.T @ (xc.T @ yc)
    s = np.clip(s, 0.0, None)
    scale = max(s.sum(), 1e-12) / d  # tr(Xc^T Xc) / D_B, as in (3)
    return [(left / (s + r * scale)) @ right + my for r in grid]


def select_ridge(x: np.ndarray, y: np.ndarray, image: np.ndarray, labels: np.ndarray, grid=RIDGE_GRID, folds: int = FOLDS
                 ) -> tuple[float, dict]:
    """The relative strength r in ``grid`` whose fits predict held-out images' targets best.

    x (n, D_B), y (n, D_A): features of n views; ``image`` (n,) the image each view is of; ``labels``
    (N,) each image's class. Returns r and {r: held-out mean squared error}; (DEFAULT_RIDGE, {})
    when a class has a single image (nothing can be held out without losing the class)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    f = min(folds, int(np.bincount(labels).min())) if len(labels) else 0  # images of the smallest class
    if f < 2:
        return DEFAULT_RIDGE, {}
    fold_of_view = image_folds(labels, f)[image]
    err = np.zeros(len(grid))
    for k in range(f):
        tr, te = fold_of_view != k, fold_of_view == k
        for i, pred in enumerate(_fold_predictions(x[tr], y[tr], x[te], grid)):
            err[i] += ((pred - y[te]) ** 2).sum()
    scores = {float(r): float(e / y.size) for r, e in zip(grid, err)}
    best = min(grid, key=lambda r: (scores[float(r)], -r))  # ties: the stronger, safer fit
    return float(best), scores
