"""edgedd.device.adapt: the closed form against a direct solve, and the keep-the-better rule."""

from __future__ import annotations

import numpy as np
import pytest

from edgedd.device.adapt import _Problem, adapt_fit, delta, keep_adapted, local_folds, local_strength, verdict
from edgedd.device.local_probe import expressible, mix, probe_projector, probe_scale
from edgedd.device.ridge import fit_ridge


def _direct(xv, yv, xl, t, wc, bc, lam, w, prior):
    """(5) solved as one linear system in vec([W p]) (small sizes only)."""
    nv, db = xv.shape
    da = yv.shape[1]
    x1, l1 = np.hstack([xv, np.ones((nv, 1))]), np.hstack([xl, np.ones((len(xl), 1))])
    yres = yv - xv if prior == "identity" else yv
    e = np.eye(db + 1)
    e[-1, -1] = 0
    shift = xl @ wc.T if prior == "identity" else 0.0
    rhs = yres.T @ x1 + w * wc.T @ (t - bc - shift).T @ l1
    m = np.kron(x1.T @ x1 + lam * e, np.eye(da)) + w * np.kron(l1.T @ l1, wc.T @ wc)
    th = np.linalg.solve(m, rhs.reshape(-1, order="F")).reshape(da, db + 1, order="F")
    return th[:, :db] + (np.eye(da) if prior == "identity" else 0.0), th[:, db]


@pytest.mark.parametrize("prior", ["none", "identity"])
def test_closed_form_matches_direct_solve(prior):
    rng = np.random.default_rng(0)
    nv, db, c, n = 60, 12, 4, 15
    da = db if prior == "identity" else 9
    xv, yv, vl = rng.normal(size=(nv, db)), rng.normal(size=(nv, da)), rng.integers(0, c, nv)
    wc, bc, xl, yl = rng.normal(size=(c, da)), rng.normal(size=c), rng.normal(size=(n, db)), rng.integers(0, c, n)
    p = _Problem(xv, yv, vl, wc, bc, xl, yl, prior)
    r, wrel = 0.1, 2.0
    w0, b0 = fit_ridge(xv, yv, r, prior)
    assert np.allclose(p.logits0(r), (xl @ w0.T.astype(np.float64) + b0) @ wc.T + bc, atol=1e-4)
    dw, db_ = delta(p, r, wrel)
    want_w, want_b = _direct(xv, yv, xl, p.t, wc, bc, p.lam(r), wrel * p.w_scale(p.kernel(r)), prior)
    assert np.allclose(w0 + dw, want_w, atol=1e-4) and np.allclose(b0 + db_, want_b, atol=1e-4)


def _domain(rng, n_per, means, mix, noise):
    """Images of each class in A-space (class means + noise) and their phi_B = mix(A) + noise."""
    a = np.concatenate([means[c] + 0.6 * rng.normal(size=(n_per, means.shape[1])) for c in range(len(means))])
    y = np.repeat(np.arange(len(means)), n_per)
    return a, a @ mix.T + noise * rng.normal(size=(len(a), mix.shape[0])), y


def _world(seed=0):
    """Views from one domain; the device's local and test images from a shifted one (its B differs)."""
    rng = np.random.default_rng(seed)
    c, da, db = 5, 16, 24
    means = 1.0 * rng.normal(size=(c, da))
    mix = rng.normal(size=(db, da)) / np.sqrt(da)
    ya, xv, vl = _domain(rng, 4, means, mix, 0.1)
    shift = mix + 1.5 * rng.normal(size=(db, da)) / np.sqrt(da)  # the local domain maps A-space differently
    _, xl, yl = _domain(rng, 8, means, shift, 0.1)
    _, xt, yt = _domain(rng, 60, means, shift, 0.1)
    wc, bc = means.astype(np.float64), -0.5 * (means**2).sum(1)  # nearest class mean in A-space
    return dict(xv=xv, yv=ya, vl=vl, wc=wc, bc=bc, xl=xl, yl=yl, xt=xt, yt=yt)


def _top1(fit, w):
    return float(
        (
            ((w["xt"] @ fit["weight"].T.astype(np.float64) + fit["bias"]) @ w["wc"].T + w["bc"]).argmax(1) == w["yt"]
        ).mean()
    )


def test_adapt_helps_on_a_shifted_domain_and_is_kept():
    w = _world()
    ad = adapt_fit(w["xv"], w["yv"], w["vl"], w["wc"], w["bc"], w["xl"], w["yl"], view_ridge=0.1, probe=False)
    base = adapt_fit(
        w["xv"], w["yv"], w["vl"], w["wc"], w["bc"], w["xl"], w["yl"], view_ridge=0.1, w_grid=(1e-9,), probe=False
    )
    assert ad["used"] == "adapted" and ad["wins"] > ad["losses"]
    assert ad["ridge"] == base["ridge"]  # one strength for every candidate and the fallback
    assert _top1(ad, w) > _top1(base, w) + 0.05


def test_the_local_images_move_the_strength_within_a_decade_and_only_on_evidence():
    """In this world the views' strength 0.1 is too weak for the local domain (test top-1 0.56; 0.76
    at 1.0): the local images' cross-entropy moves it, which lifts the test images; from 1e-3 (top-1
    0.12, at chance) it moves no further than a decade; shuffled labels leave it where the views put it."""
    w = _world()
    args = (w["xv"], w["yv"], w["vl"], w["wc"], w["bc"], w["xl"])
    views = dict(zip(("weight", "bias"), fit_ridge(w["xv"], w["yv"], 0.1), strict=True))
    ad = adapt_fit(*args, w["yl"], view_ridge=0.1, w_grid=(1e-9,), probe=False)
    assert ad["strength_from"] == "local images" and ad["ridge"] > 0.1 and ad["view_ridge"] == 0.1
    assert _top1(ad, w) > _top1(views, w) + 0.1
    moved = dict(zip(("weight", "bias"), fit_ridge(w["xv"], w["yv"], ad["ridge"]), strict=True))
    z = (w["xl"] @ moved["weight"].T.astype(np.float64) + moved["bias"]) @ w["wc"].T + w["bc"]
    assert ad["cv_top1_views_only"] == (z.argmax(1) == w["yl"]).mean()  # the views-only fit compared: the moved one
    far = adapt_fit(*args, w["yl"], view_ridge=1e-3, w_grid=(1e-9,), probe=False)
    assert far["strength_from"] == "local images" and 1e-3 < far["ridge"] <= 1e-2 * (1 + 1e-9)
    wrong = np.random.default_rng(3).permutation(w["yl"])
    bad = adapt_fit(*args, wrong, view_ridge=0.1, w_grid=(1e-9,), probe=False)
    assert (
        bad["strength_from"] == "views"
        and bad["ridge"] == 0.1
        and {0.1, 1.0} <= {c["ridge"] for c in bad["strength_ce"]}
    )


class _Margins:
    """A stand-in for _Problem: the logits of the views-only fit at strength r give each image's own
    class the margin ``margins[r]`` over the other classes (so its cross-entropy falls as it grows)."""

    def __init__(self, margins: dict, classes: int = 10, per_class: int = 4):
        self.yl = np.repeat(np.arange(classes), per_class)
        self.margins, self.classes = margins, classes

    def logits0(self, r: float) -> np.ndarray:
        z = np.zeros((len(self.yl), self.classes))
        z[np.arange(len(self.yl)), self.yl] = self.margins[r]
        return z


def test_the_strength_moves_by_the_one_standard_error_rule_to_the_nearest_good_strength():
    grid = (0.1, 0.3, 1.0, 3.0, 10.0)
    noise = np.random.default_rng(0).normal(size=(len(grid), 40))
    # 0.1 best by a hair over 0.3 (far inside one SE), both far better than the views' 1.0: 0.3, the
    # nearer of the two to the views' choice, not the best
    clear = _Margins({r: m + 0.5 * e for r, m, e in zip(grid, (3.05, 3.0, 0.5, 0.3, 0.1), noise, strict=True)})
    r, info = local_strength(clear, 1.0, 10, grid)
    assert r == 0.3 and info["strength_from"] == "local images"
    assert [c["ridge"] for c in info["strength_ce"]] == list(grid)
    # 0.1 better than the views' 1.0 only by noise: the views' choice stays
    marginal = _Margins({r: m + e for r, m, e in zip(grid, (1.05, 0.9, 1.0, 0.5, 0.2), noise, strict=True)})
    r, info = local_strength(marginal, 1.0, 10, grid)
    assert r == 1.0 and info["strength_from"] == "views"
    # no decade around a zero strength, and no score from logits that are not finite: nothing moves
    assert local_strength(_Margins({**clear.margins, 0.0: 1.0}), 0.0, 10, grid)[0] == 0.0
    inf = _Margins({r: (np.inf if r == 1.0 else 1.0) for r in grid})
    with np.errstate(invalid="ignore"):  # inf - inf in the cross-entropy: NaN, which must not move r
        assert local_strength(inf, 1.0, 10, grid)[0] == 1.0


def test_mislabelled_local_images_fall_back_to_the_views_only_fit():
    w = _world()
    wrong = np.random.default_rng(3).permutation(w["yl"])  # labels shuffled: nothing to learn
    ad = adapt_fit(w["xv"], w["yv"], w["vl"], w["wc"], w["bc"], w["xl"], wrong, view_ridge=0.1)
    assert ad["used"] == "views only" and "chance" in ad["why_not_adapted"]
    w0, b0 = fit_ridge(w["xv"], w["yv"], 0.1)
    assert np.array_equal(ad["weight"], w0) and np.array_equal(ad["bias"], b0)


def test_one_image_per_class_is_held_out_alone():
    fold, grouped = local_folds(np.array([0, 1, 2, 2]))
    assert not grouped and len(np.unique(fold)) == 4
    fold, grouped = local_folds(np.array([0, 0, 1, 1, 1]))
    assert grouped and len(np.unique(fold)) == 2


def test_keep_rule_needs_more_than_a_coin():
    assert not keep_adapted(1, 0) and not keep_adapted(3, 1) and keep_adapted(5, 1) and not keep_adapted(0, 0)


def test_a_win_below_chance_is_not_kept():
    labels = np.repeat(np.arange(5), 8)
    assert "chance" in verdict({"wins": 9, "losses": 1, "cv_top1_adapted": 0.3}, labels, 5)
    assert verdict({"wins": 9, "losses": 1, "cv_top1_adapted": 0.9}, labels, 5) is None


def test_the_probe_candidate_is_exactly_a_projector():
    """(6) through the sidecar's projector and the golden classifier gives the mixed logits, for any x."""
    w = _world()
    w0, b0 = fit_ridge(w["xv"], w["yv"], 0.1)
    golden = lambda x, wt, b: (x @ wt.T.astype(np.float64) + b) @ w["wc"].T + w["bc"]  # noqa: E731
    z0, zt = golden(w["xl"], w0, b0), golden(w["xt"], w0, b0)
    onehot = np.eye(5)[w["yl"]]
    wl, bl = fit_ridge(w["xl"], onehot, 1.0)
    zl = w["xt"] @ wl.T.astype(np.float64) + bl
    g, pinv = probe_scale(z0, 5), expressible(w["wc"])
    for a in (0.5, np.inf):
        wt, b = probe_projector(w["xl"], w["yl"], z0, 5, a, 1.0, w0, b0, w["wc"], w["bc"], pinv)
        assert np.allclose(golden(w["xt"], wt, b), mix(zt, zl, a, g), atol=1e-3)
    assert expressible(np.ones((3, 8))) is None  # rank 1 < 3 classes: (6) is not a projector, the candidate is skipped


def test_the_probe_is_kept_when_the_local_images_are_informative_and_not_when_mislabelled():
    """With (5) held at zero weight, the local probe is the only way the labels can help: it must be
    chosen and lift the test images, and must not be with shuffled labels."""
    w = _world()
    args = (w["xv"], w["yv"], w["vl"], w["wc"], w["bc"], w["xl"])
    w0, b0 = fit_ridge(w["xv"], w["yv"], 0.1)
    views = {"weight": w0, "bias": b0}
    ad = adapt_fit(*args, w["yl"], view_ridge=0.1, w_grid=(1e-9,))
    assert ad["used"] == "local probe" and ad["candidate"] == "local probe" and ad["wins"] > ad["losses"]
    assert ad["cv_top1_probe"] == ad["cv_top1_adapted"] > ad["cv_top1_views_only"]
    assert _top1(ad, w) > _top1(views, w) + 0.1
    wrong = np.random.default_rng(3).permutation(w["yl"])
    bad = adapt_fit(*args, wrong, view_ridge=0.1, w_grid=(1e-9,))
    assert bad["used"] == "views only" and bad["why_not_adapted"]
    assert np.array_equal(bad["weight"], views["weight"]) and np.array_equal(bad["bias"], views["bias"])


def test_one_image_per_class_keeps_the_views_only_fit():
    """Held out alone, an image's class is absent from the probe's fit: the probe cannot win there."""
    w = _world()
    first = np.array([np.flatnonzero(w["yl"] == c)[0] for c in range(5)])
    ad = adapt_fit(w["xv"], w["yv"], w["vl"], w["wc"], w["bc"], w["xl"][first], w["yl"][first], view_ridge=0.1)
    assert not ad["grouped_folds"] and ad["used"] == "views only"
