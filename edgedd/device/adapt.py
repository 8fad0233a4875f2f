"""On-device adaptation: the projector fitted from the synthetic views *and* a few local labelled
images, in closed form (numpy only). METHOD.md, "Adapting to local images", states the rule.

The objective, for the projector P(f) = W f + p (D_B -> D_A) and the golden classifier (W_c, b_c):

    min_P  sum_v ||P(x_v) - y_v||^2 + lam ||W||^2                                         (views, as (3))
         + w sum_i ||W_c P(x_i) + b_c - t_{c_i}||^2                                          (local)   (5)

x_v, y_v: phi_B and phi_A of the stored synthetic views (y_v - x_v under the identity prior, as
(4)); x_i: phi_B of local image i with label c_i; t_c: the golden classifier's mean logits over the
views of class c, i.e. the label said in the golden classifier's own logit scale.

Why it stays closed form and small. Write P = P0 + Delta, P0 the views-only ridge fit (today's).
The views term's excess over P0 is tr(Delta H Delta^T), H = [X 1]^T [X 1] + lam diag(I, 0); the
local term sees Delta only through W_c Delta. Setting the gradient to zero gives

    Delta = W_c^T B [X_l 1]^T H^-1,       B (C x n)

so the logits of local image j move by S B K e_j with S = W_c W_c^T (C x C) and the kernel
K_ij = (x_i - m)^T (Xc^T Xc + lam I)^-1 (x_j - m) + 1/N_v (n x n; m the views' mean feature),
and B solves the Sylvester equation  B + w S B K = w (T - Z)  (Z: logits of P0). With S = Q diag(s) Q^T
and K = U diag(k) U^T it is elementwise: (Q^T B U)_ab = w (Q^T (T - Z) U)_ab / (1 + w s_a k_b).
One eigendecomposition of Xc^T Xc (D_B x D_B) serves every strength; each fold then costs one n x n
eigendecomposition (every weight shares it) and each weight a few small products.

The strength. lam starts as deploy-check's (the bundle's recorded choice on held-out real images,
edgedd.device.ridge.select_ridge_on_images, else the views' cross-validation, select_ridge). A
recorded one stays (strength_span 0: edgedd.device.adaptation.local_span). A cross-validated one may
move: the local images are not in that fit, so each one is a held-out image for it at every strength: their
mean cross-entropy, CE(r) = mean_i [logsumexp z_i(r) - z_i(r)_{c_i}] with z(r) the logits of P0
fitted at r, scores every strength within a decade of that one (STRENGTH_SPAN) at the cost of one
product each. The views' r is moved only when CE says so
by more than one standard error of the paired per-image difference from the best r (the
one-standard-error rule, leaning to the views' choice: of the strengths within one SE of the best,
the nearest the views' r), and only when the fit at the new strength classifies the local images
above chance at 3 sigma (labels that say nothing about the images say nothing about the strength
either). Why bounded and leaning: choosing the strength jointly with w by a few dozen images'
held-out top-1 let chance pick strengths that cost up to 14 points (METHOD.md); CE is smoother than
top-1, and one knob of at most five values is fewer chances to be fooled than 42 candidates.

Choosing w, and keeping the better. w is chosen at that strength by grouped cross-validation over
the *local* images (round robin within each class, F = min(5, smallest class), every class in
every training fold):
each w is fitted on F-1 folds and predicts the held-out fold; the w with the
most held-out images right wins (ties: the smaller w, then lower held-out logit error). It is kept
only if, on those same held-out predictions, it is right where the views-only fit is wrong more
often than the reverse by more than one standard deviation of a fair coin (wins - losses >
sqrt(wins + losses)) and is right on more held-out images than chance reaches at 3 sigma (labels
that say nothing about the images can still be fitted better than a fit that ignores them);
otherwise the views-only fit stays and the report says why. With one image
per class no split keeps every class: then each image is held out alone (its class absent from the
fit), so the check can only see harm to it or help through the other classes - a deliberately
conservative fallback that keeps the views-only fit unless the others' images help.
"""

from __future__ import annotations

import math

import numpy as np

from .accuracy import chance_bound
from .local_probe import cross_validate_probe, expressible, probe_projector
from .ridge import FOLDS, RIDGE_GRID, cross_entropy, fit_ridge, image_folds, residual

WEIGHT_GRID = (
    0.03,
    0.1,
    0.3,
    1.0,
    3.0,
    10.0,
    30.0,
)  # w relative to the local term's natural scale (see _Problem.w_scale)
STRENGTH_SPAN = 1.0  # decades either side of the views' strength the local images may move it to
MAX_LOCAL_IMAGES = 2000  # the local term is n x n; adaptation is for a few images per class


class _Problem:
    """What every candidate shares: the views' eigenbasis and the local images in it."""

    def __init__(self, xv, yv, view_labels, wc, bc, xl, yl, prior):
        xv = xv.astype(np.float64)
        self.prior = prior
        yres = residual(xv, yv.astype(np.float64), prior)
        self.mx, self.my = xv.mean(0), yres.mean(0)
        xc, yc = xv - self.mx, yres - self.my
        self.nv, self.d = xc.shape
        s, self.v = np.linalg.eigh(xc.T @ xc)
        self.s = np.clip(s, 0.0, None)
        self.scale = max(float(self.s.sum()), 1e-12) / self.d  # tr(Xc^T Xc) / D_B, as in (3)
        self.wc, self.bc = wc.astype(np.float64), bc.astype(np.float64)
        self.m = self.wc @ (yc.T @ (xc @ self.v))  # (C, D_B): W_c Yc^T Xc V, the P0 logits' slope in the eigenbasis
        xl = xl.astype(np.float64)
        self.zv = (xl - self.mx) @ self.v  # local images in the eigenbasis
        base = self.my @ self.wc.T + self.bc
        self.z_const = base + (xl @ self.wc.T if prior == "identity" else 0.0)  # the identity prior adds W_c x
        gl = yv.astype(np.float64) @ self.wc.T + self.bc  # golden logits of the views
        c = len(bc)
        self.t_class = np.stack(
            [gl[view_labels == k].mean(0) if (view_labels == k).any() else gl.mean(0) for k in range(c)]
        )
        self.yl = yl
        self.t = self.t_class[yl]
        sig, self.q = np.linalg.eigh(self.wc @ self.wc.T)
        self.sig = np.clip(sig, 0.0, None)

    def lam(self, r: float) -> float:
        return r * self.scale

    def logits0(self, r: float) -> np.ndarray:
        """Logits of the local images through P0 at relative strength r (the views-only fit)."""
        return self.z_const + (self.zv / (self.s + self.lam(r))) @ self.m.T

    def kernel(self, r: float) -> np.ndarray:
        return (self.zv / (self.s + self.lam(r))) @ self.zv.T + 1.0 / self.nv

    def w_scale(self, kern: np.ndarray) -> float:
        """1 / (mean eigenvalue of S * mean diagonal of K): w = relative weight * this, so that a
        relative weight of 1 makes the local term's pull comparable to the views' (scale-free)."""
        return 1.0 / max(float(self.sig.mean()) * float(np.mean(np.diag(kern))), 1e-12)


def kernel_eig(kern: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """K = U diag(kap) U^T (kap clipped at 0): what :func:`solve_dual` needs of K, the same for every w."""
    kap, u = np.linalg.eigh(kern)
    return np.clip(kap, 0.0, None), u


def solve_dual(sig, q, eig, resid, w) -> np.ndarray:
    """B (C, n) of the Sylvester equation B + w S B K = w R, R (C, n) (S = Q diag(sig) Q^T), elementwise in the
    eigenbases; ``eig`` = :func:`kernel_eig` (K), computed once for every w.
    """
    kap, u = eig
    rp = q.T @ resid @ u
    bp = w * rp / (1.0 + w * np.outer(sig, kap))
    return q @ bp @ u.T


def local_folds(labels: np.ndarray, folds: int = FOLDS) -> tuple[np.ndarray, bool]:
    """Fold of each local image and whether every class stays in every training fold (False: one
    image per class somewhere, each image is then its own fold)."""
    f = min(folds, int(np.bincount(labels)[np.unique(labels)].min()))
    if f >= 2:
        return image_folds(labels, f), True
    return np.arange(len(labels)), False


def cross_validate(p: _Problem, r_grid, w_grid, fold: np.ndarray) -> dict:
    """Held-out logits of every candidate (r, w) over the folds: {(r, w): (n, C) logits}."""
    n = len(p.yl)
    out = {}
    for r in r_grid:
        z, kern = p.logits0(r), p.kernel(r)
        ws = p.w_scale(kern)
        for w in w_grid:
            out[(r, w)] = np.empty((n, p.t.shape[1]))
        for k in np.unique(fold):
            tr, te = fold != k, fold == k
            eig = kernel_eig(kern[np.ix_(tr, tr)])  # one n x n eigendecomposition per fold serves every w
            for w in w_grid:
                b = solve_dual(p.sig, p.q, eig, (p.t - z)[tr].T, w * ws)
                out[(r, w)][te] = z[te] + ((p.wc @ (p.wc.T @ b)) @ kern[np.ix_(tr, te)]).T
    return out


def _choose(p: _Problem, cv: dict, base: np.ndarray) -> tuple[tuple, dict]:
    """The candidate with most held-out images right (ties: smaller w, then lower logit error), and
    its paired comparison with the views-only fit ``base`` on the same held-out images."""

    def key(c):
        lg = cv[c]
        return (-int((lg.argmax(1) == p.yl).sum()), c[1], float(((lg - p.t) ** 2).mean()))

    best = min(cv, key=key)
    right_a, right_b = cv[best].argmax(1) == p.yl, base.argmax(1) == p.yl
    wins, losses = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    return best, {
        "wins": wins,
        "losses": losses,
        "cv_top1_adapted": float(right_a.mean()),
        "cv_top1_views_only": float(right_b.mean()),
    }


def above_chance(right: int, labels: np.ndarray, classes: int) -> tuple[bool, float, int | None]:
    """Whether ``right`` of the images labelled ``labels`` beats chance at 3 sigma; chance and the bound."""
    n = len(labels)
    chance = max(1.0 / classes, float(np.bincount(labels).max()) / n)
    k = chance_bound(n, chance)
    return k is not None and right >= k, chance, k


def local_strength(
    p: _Problem, view_ridge: float, classes: int, grid=RIDGE_GRID, span: float = STRENGTH_SPAN
) -> tuple[float, dict]:
    """The views-only fit's strength, moved by the local images' cross-entropy within ``span`` decades
    (module docstring, "The strength"; span 0 keeps the views' strength): of the grid's strengths
    within the span (five on the half-decade grid) and the views' own, those within one standard
    error of the lowest CE; of them the nearest the views' (equally near: the stronger). Returns r and
    {"strength_from": "views" | "local images", "strength_ce": [{"ridge": r, "ce": mean CE}, ...]}."""
    view_ridge = float(view_ridge)
    near = {float(r) for r in grid if view_ridge > 0 and abs(math.log10(r / view_ridge)) <= span + 1e-9}
    cand = sorted({view_ridge} | near)
    ce = {r: cross_entropy(p.logits0(r), p.yl) for r in cand}
    info = {"strength_from": "views", "strength_ce": [{"ridge": r, "ce": float(v.mean())} for r, v in ce.items()]}
    if len(cand) < 2 or len(p.yl) < 2 or not all(np.isfinite(v).all() for v in ce.values()):
        return view_ridge, info  # nothing to move to (no decade around 0), nothing to compare, or no score
    best = min(cand, key=lambda r: ce[r].mean())

    def within_one_se(r: float) -> bool:
        d = ce[r] - ce[best]
        return float(d.mean()) <= float(d.std(ddof=1)) / math.sqrt(len(d))

    r = min((r for r in cand if within_one_se(r)), key=lambda r: (abs(math.log(r / view_ridge)), -r))
    right = int((p.logits0(r).argmax(1) == p.yl).sum())
    if r == view_ridge or not above_chance(right, p.yl, classes)[0]:
        return view_ridge, info
    info["strength_from"] = "local images"
    return r, info


def keep_adapted(wins: int, losses: int) -> bool:
    """The adapted fit replaces the views-only one only when it wins on held-out images by more than
    a fair coin's one standard deviation: wins - losses > sqrt(wins + losses)."""
    return wins - losses > math.sqrt(wins + losses)


def verdict(cmp: dict, labels: np.ndarray, classes: int) -> str | None:
    """Why the adapted fit is not kept, or None when it is: it must beat the views-only fit
    (:func:`keep_adapted`) and chance at 3 sigma on the held-out images (labels that say nothing
    about the images can still be fitted, and beat a views-only fit that ignores them)."""
    n = len(labels)
    if not keep_adapted(cmp["wins"], cmp["losses"]):
        return (
            f"held out, adapting was right on {cmp['wins']} image(s) the views-only fit got wrong and wrong on "
            f"{cmp['losses']} it got right: not more than noise"
        )
    right = int(round(cmp["cv_top1_adapted"] * n))
    ok, chance, k = above_chance(right, labels, classes)
    if not ok:
        return (
            f"held out, adapting was right on {right}/{n} local images, not above chance ({chance:.0%}) at 3 sigma"
            + ("" if k is None else f" (needs {k})")
            + ": the labels may not match the images"
        )
    return None


def adapt_fit(
    xv,
    yv,
    view_labels,
    wc,
    bc,
    xl,
    yl,
    prior: str = "none",
    view_ridge: float = 1e-3,
    w_grid=WEIGHT_GRID,
    probe: bool = True,
    strength_span: float = STRENGTH_SPAN,
) -> dict:
    """Choose the strength (the views', moved by the local images' cross-entropy), fit (5) there, choose w
    by grouped cross-validation over the local images; keep the better.

    xv (N_v, D_B) / yv (N_v, D_A): phi_B and phi_A of the views; view_labels (N_v,) their classes;
    wc (C, D_A), bc (C,): the golden classifier; xl (n, D_B), yl (n,): the local images' phi_B and
    labels; ``view_ridge``: deploy-check's strength (the bundle's recorded one or
    edgedd.device.ridge.select_ridge's), where :func:`local_strength` starts; the views-only fit at
    the chosen strength is kept when neither candidate wins; ``probe``: also the candidate (6) of
    edgedd.device.local_probe, kept instead of (5) when it is right on more held-out images;
    ``strength_span``: how far (decades) the local images may move the strength (0: not at all, as
    for a strength pack recorded, edgedd.device.adaptation.local_span). Returns weight, bias
    (float32) and the report."""
    yl = np.asarray(yl, dtype=np.int64)
    p = _Problem(xv, yv, np.asarray(view_labels), wc, bc, xl, yl, prior)
    fold, grouped = local_folds(yl)
    r0, strength = local_strength(p, view_ridge, len(bc), span=strength_span)
    base = p.logits0(r0)
    (_, w), cmp = _choose(p, cross_validate(p, (r0,), w_grid, fold), base)  # (5) only at r0: w is the choice
    pinv = expressible(p.wc) if probe else None
    probe = None
    if pinv is not None:  # the local probe, (6) in edgedd.device.local_probe: kept instead when it wins held out
        cvp = cross_validate_probe(xl, yl, base, fold, len(bc))
        (rn, a), cmp_p = _choose(p, {(-c[1], c[0]): v for c, v in cvp.items()}, base)  # ties: smaller a, larger r
        probe = {"probe_mix": None if np.isinf(a) else float(a), "probe_ridge": float(-rn)}
        probe["cv_top1_probe"] = cmp_p["cv_top1_adapted"]
        if cmp_p["cv_top1_adapted"] > cmp["cv_top1_adapted"]:  # right on more held-out images than (5)
            cmp = cmp_p
    candidate = "local probe" if probe is not None and cmp is cmp_p else "adapted"
    why = verdict(cmp, yl, len(bc))
    report = {
        "used": candidate if why is None else "views only",
        "candidate": candidate,
        "why_not_adapted": why,
        "images": int(len(yl)),
        "classes": int(len(np.unique(yl))),
        "folds": int(len(np.unique(fold))),
        "grouped_folds": grouped,
        "view_ridge": float(view_ridge),
        "ridge": float(r0),
        **strength,
        "local_weight": float(w),
        **(probe or {"probe_mix": None, "probe_ridge": None, "cv_top1_probe": None}),
        **cmp,
    }
    w0, b0 = fit_ridge(xv, yv, r0, prior)  # the views-only fit: kept, or what (5) and (6) move
    if why is not None:
        return {"weight": w0, "bias": b0, **report}
    if candidate == "local probe":
        a = np.inf if probe["probe_mix"] is None else probe["probe_mix"]
        wt, b = probe_projector(xl, yl, base, len(bc), a, probe["probe_ridge"], w0, b0, p.wc, p.bc, pinv)
        return {"weight": wt, "bias": b, **report}
    dw, db = delta(p, r0, w)
    return {"weight": (w0 + dw).astype(np.float32), "bias": (b0 + db).astype(np.float32), **report}


def delta(p: _Problem, r: float, w: float) -> tuple[np.ndarray, np.ndarray]:
    """Delta = W_c^T B [X_l 1]^T H^-1 fitted on every local image, as a weight (D_A, D_B) and a bias."""
    kern = p.kernel(r)
    b = solve_dual(p.sig, p.q, kernel_eig(kern), (p.t - p.logits0(r)).T, w * p.w_scale(kern))
    tm = (p.zv / (p.s + p.lam(r))) @ p.v.T  # (n, D_B): (x_i - m)^T Hc^-1
    left = p.wc.T @ b  # (D_A, n)
    return left @ tm, left @ (1.0 / p.nv - tm @ p.mx)
