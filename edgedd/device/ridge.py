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
targets as the golden classifier sees them, in its logit space (eq. 5 of select_ridge; ties: the
stronger). Folds are round-robin within each class, F = min(5, smallest class),
so every class stays in every training fold: a held-out image of a class the fit never saw would
reward shrinking everything to the mean (measured at IPC 1, where no such split exists: there the
weak default r = 1e-3 stays, the strength evaluation used before).

**The prior.** (3) shrinks P towards 0: outside the few directions the views span, real images
map to the targets' mean. That is right for an unrelated B, and wrong when B *is* A's network (the
same weights, e.g. its int8 build on the device, or A at another resolution): there the best guess
off the views is the identity, and (3) would throw away every feature direction the N*K views do
not span (1,280 of them for an EfficientNet at N*K = 800). With ``prior="identity"`` (D_B = D_A;
pack records it when the edge weights hash to A's) the fit shrinks towards the identity instead,

    P = I + argmin_D ||Xc D^T - (Yc - Xc)||^2 + lam ||D||^2                               (4)

i.e. (3) on the residual targets y - x, plus I: for B = A exactly, P = I and the device keeps the
golden classifier as it is; for B = A at another input size, P corrects what the size moved. (An
int8 B is fitted on its fp32 graph's features: edgedd.device.finetune.fit_features.)

Each fold costs one eigendecomposition, of Xc Xc^T (n x n) when there are fewer rows than features
and of Xc^T Xc (D x D) otherwise; every r then costs a matrix product:

    Xh_c W^T = Xh_c Xc^T U diag(1 / (s + lam)) U^T Yc      (Xc Xc^T = U diag(s) U^T, push-through)
    Xh_c W^T = Xh_c V diag(1 / (s + lam)) V^T Xc^T Yc      (Xc^T Xc = V diag(s) V^T)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# select_ridge's strengths, half a decade apart: the held-out error's minimum often lies between two
# decades, and a decade grid turned a small change in the set into a jump of 10x in r
# (docs/RESULTS.md, "The projector's strength").
RIDGE_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
# the local probe's two-knob cross-validation (strength x mix) keeps a decade apart
COARSE_RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_RIDGE = 1e-3  # when no split keeps every class in training (IPC 1)
# a strength a bundle records for the device (reference.device_ridge) must lie in this range: pack
# records one of RIDGE_GRID; anything else is a crafted or broken artifact
RECORDED_RIDGE_RANGE = (1e-6, 1e3)
# pack records a strength chosen on held-out real images only from this many of them: fewer are less
# evidence than the synthetic views' cross-validation (and than a device's own labelled images, which
# edgedd adapt lets move a cross-validated strength but not a recorded one)
MIN_RIDGE_IMAGES = 100
FOLDS = 5
PRIORS = ("none", "identity")  # what P shrinks towards: 0 (3), or I (4) when B is A's network


def projector_prior(sha_a: str, sha_b: str, d_a: int, d_b: int) -> str:
    """The prior pack records: "identity" when B's weights are A's (same sha256, D_B = D_A)."""
    return "identity" if sha_a == sha_b and d_a == d_b else "none"


def recorded_prior(meta: dict) -> str:
    """The prior an artifact's metadata records (format 1.2); older artifacts have none: "none"."""
    return meta.get("reference", {}).get("projector_prior", "none")


def recorded_ridge(meta: dict) -> float | None:
    """The strength pack chose for the device on held-out real images (format 1.6,
    ``reference.device_ridge``; :func:`select_ridge_on_images`), or None: older bundles, or a pack
    without the run's training data, leave it to the device's cross-validation (:func:`select_ridge`)."""
    r = meta.get("reference", {}).get("device_ridge")
    return None if r is None else float(r)


def residual(x: np.ndarray, y: np.ndarray, prior: str) -> np.ndarray:
    """The targets (3) is fitted to under ``prior``: y, or y - x for the identity prior (4)."""
    if prior not in PRIORS:
        raise ValueError(f"unknown projector prior {prior!r}")
    if prior == "none":
        return y
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"an identity prior needs D_B = D_A, not {x.shape[1]} and {y.shape[1]}")
    return y - x


def fit_ridge(
    x: np.ndarray, y: np.ndarray, ridge: float = DEFAULT_RIDGE, prior: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Equation (3), or (4) with prior="identity". x (n, D_B), y (n, D_A) -> W (D_A, D_B), b (D_A,),
    in float64 then float32."""
    x = x.astype(np.float64)
    y = residual(x, y.astype(np.float64), prior)
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    lam = ridge * max(np.trace(gram), 1e-12) / gram.shape[0]
    wt = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ yc)
    w = wt.T + (np.eye(wt.shape[0]) if prior == "identity" else 0.0)
    return w.astype(np.float32), (my - mx @ wt).astype(np.float32)


def mse(x: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((x @ w.T + b - y) ** 2))


def objective(x: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float, prior: str = "none") -> float:
    """(3) (or (4)) per row for W, with W's best bias (the centred problem): what fit_ridge minimises
    at ``ridge``."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    y = residual(x, y.astype(np.float64), prior)
    if prior == "identity":
        w = w - np.eye(w.shape[0])
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


def select_ridge(
    x: np.ndarray,
    y: np.ndarray,
    image: np.ndarray,
    labels: np.ndarray,
    grid=RIDGE_GRID,
    folds: int = FOLDS,
    prior: str = "none",
    *,
    classifier: np.ndarray | None,
) -> tuple[float, dict]:
    """The relative strength r in ``grid`` whose fits predict held-out images' targets best, as the
    inherited classifier sees them.

    x (n, D_B), y (n, D_A): features of n views; ``image`` (n,) the image each view is of; ``labels``
    (N,) each image's class; ``classifier`` (C, D_A): the golden classifier's weight W_c. The error
    of a held-out prediction y_hat is taken in the classifier's logit space,

        e = || W_c (y_hat - y) ||^2 / C                                                   (5)

    (None: in feature space, || y_hat - y ||^2 / D_A). Why: the device only ever uses W_c P phi_B,
    so an error along a direction W_c ignores costs nothing, and the feature-space error, dominated
    by those directions, picked strengths too strong for real images (docs/RESULTS.md, "The
    projector's strength"). Returns r and {r: held-out mean error}; (DEFAULT_RIDGE, {}) when a class
    has a single image (nothing can be held out without losing the class). Under the identity prior
    the held-out error of (4) equals that of (3) on the residual targets y - x."""
    x = x.astype(np.float64)
    y = residual(x, y.astype(np.float64), prior)
    f = min(folds, int(np.bincount(labels).min())) if len(labels) else 0  # images of the smallest class
    if f < 2:
        return DEFAULT_RIDGE, {}
    fold_of_view = image_folds(labels, f)[image]
    wt = None if classifier is None else np.asarray(classifier, dtype=np.float64).T  # (D_A, C)
    err = np.zeros(len(grid))
    for k in range(f):
        tr, te = fold_of_view != k, fold_of_view == k
        for i, pred in enumerate(_fold_predictions(x[tr], y[tr], x[te], grid)):
            d = pred - y[te]
            err[i] += ((d if wt is None else d @ wt) ** 2).sum()
    width = y.shape[1] if wt is None else wt.shape[1]
    scores = {float(r): float(e / (len(y) * width)) for r, e in zip(grid, err, strict=True)}
    best = min(grid, key=lambda r: (scores[float(r)], -r))  # ties: the stronger, safer fit
    return float(best), scores


def cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-image -log softmax(z)_y, computed stably."""
    m = z.max(1, keepdims=True)
    return (m[:, 0] + np.log(np.exp(z - m).sum(1))) - z[np.arange(len(y)), y]


def select_ridge_on_images(
    x: np.ndarray,
    y: np.ndarray,
    x_real: np.ndarray,
    y_real: np.ndarray,
    classifier: np.ndarray,
    bias: np.ndarray,
    start: float,
    grid=RIDGE_GRID,
    prior: str = "none",
) -> tuple[float, dict]:
    """The relative strength whose fit (3) (or (4)) on *all* the views ``x`` -> ``y`` classifies
    labelled real images best through the golden classifier, by their mean cross-entropy

        CE(r) = mean_i [logsumexp z_i(r) - z_i(r)_{c_i}],   z_i(r) = W_c P_r(x_real_i) + b_c       (6)

    over ``grid`` (ties: the stronger); but ``start`` (the views' own choice, :func:`select_ridge`)
    stays unless the best beats it by more than one standard error of the paired per-image
    difference: a few real images must not move the strength on noise.

    Pack calls it on phi_B of the golden classifier's held-out slice of the training data, which the
    views never saw (nearly: a coreset or real start draws its digits from every training image, the
    slice included, so a synthetic image may have begun as one of them), and records the choice for
    the device (format 1.6, ``reference.device_ridge``).
    Why real images and not the views alone: the views' cross-validation asks how well a fit
    generalises to *unseen synthetic images*, and real images are further from the views than
    held-out views are; on the demo's Lite1 -> Lite0 bundle it picks r = 1 where real images peak at
    0.1 (docs/RESULTS.md, "The projector's strength on real images"). Why cross-entropy: smooth where
    top-1 on a few hundred images is a step function. Returns r and {r: {"ce": CE(r), "top1": top-1}}
    (``start`` added to the grid when it is not on it)."""
    x, xr = x.astype(np.float64), np.asarray(x_real, dtype=np.float64)
    yres = residual(x, y.astype(np.float64), prior)
    wt, bc = np.asarray(classifier, dtype=np.float64).T, np.asarray(bias, dtype=np.float64)
    yr = np.asarray(y_real, dtype=np.int64)
    cand = sorted({float(r) for r in grid} | {float(start)})
    ce, scores = {}, {}
    for r, pred in zip(cand, _fold_predictions(x, yres, xr, cand), strict=True):
        z = (pred + (xr if prior == "identity" else 0.0)) @ wt + bc
        ce[r] = cross_entropy(z, yr)
        scores[r] = {"ce": float(ce[r].mean()), "top1": float((z.argmax(1) == yr).mean())}
    return choose_on_evidence(ce, float(start)), scores


def too_few_images(n: int) -> str | None:
    """Why ``n`` held-out images choose no strength (fewer than MIN_RIDGE_IMAGES), or None."""
    if n >= MIN_RIDGE_IMAGES:
        return None
    return f"only {n} held-out real images (at least {MIN_RIDGE_IMAGES} choose a strength)"


@dataclass(frozen=True)
class StrengthChoice:
    """What :func:`choose_strength` decided: the strength to fit at, the views' own choice, and the
    held-out images' scores when they chose it ({r: {"ce", "top1"}}; None, with ``why_not``, when
    they did not)."""

    ridge: float
    views: float
    views_scores: dict
    heldout: dict | None
    images: int  # the held-out images that chose it; 0 when they did not
    why_not: str | None


def choose_strength(
    x: np.ndarray,
    y: np.ndarray,
    image: np.ndarray,
    labels: np.ndarray,
    classifier: np.ndarray,
    bias: np.ndarray,
    real: tuple[np.ndarray, np.ndarray] | None,
    prior: str = "none",
) -> StrengthChoice:
    """The projector's strength by the one rule pack records for the device and evaluate's CI fits
    at: :func:`select_ridge` on the views, then :func:`select_ridge_on_images` on ``real`` (phi_B and
    labels of held-out real images) when there are at least MIN_RIDGE_IMAGES of them and every
    strength's cross-entropy on them is finite (non-finite features choose nothing); else the views'
    choice, with the reason."""
    views, views_scores = select_ridge(x, y, image, labels, prior=prior, classifier=classifier)

    def keep(why: str) -> StrengthChoice:
        return StrengthChoice(views, views, views_scores, None, 0, why)

    if real is None:
        return keep("no held-out real images")
    few = too_few_images(len(real[1]))
    if few:
        return keep(few)
    chosen, scores = select_ridge_on_images(x, y, real[0], real[1], classifier, bias, views, prior=prior)
    if not all(np.isfinite(v["ce"]) for v in scores.values()):
        return keep("the held-out images' cross-entropy is not finite")
    return StrengthChoice(chosen, views, views_scores, scores, len(real[1]), None)


def choose_on_evidence(ce: dict[float, np.ndarray], start: float) -> float:
    """The strength of least mean per-image cross-entropy in ``ce`` ({r: (n,) CE}; ties: the
    stronger, larger r), if it beats ``start``'s by more than one standard error of the paired
    per-image difference d_i = CE_i(start) - CE_i(best):

        mean(d) > sd(d) / sqrt(n)                                                                (7)

    else ``start``. Strict: an exact tie with ``start`` (d = 0, mean and error both 0) keeps it. One
    image gives no error estimate and never moves it."""
    best = min(ce, key=lambda r: (float(ce[r].mean()), -r))
    d = ce[start] - ce[best]
    se = float(d.std(ddof=1)) / np.sqrt(len(d)) if len(d) > 1 else np.inf
    return best if float(d.mean()) > se else start
