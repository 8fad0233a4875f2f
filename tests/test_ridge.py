"""The device's projector fit (edgedd.device.ridge): the cross-validated strength is computed
exactly, held-out images are unseen, every class stays in training, and the choice follows the
held-out error."""

import numpy as np
import pytest

from edgedd.device.ridge import (
    DEFAULT_RIDGE,
    RIDGE_GRID,
    _fold_predictions,
    choose_on_evidence,
    choose_strength,
    cross_entropy,
    fit_ridge,
    image_folds,
    objective,
    recorded_ridge,
    select_ridge,
    select_ridge_on_images,
)


@pytest.mark.parametrize("n", [12, 60])  # fewer rows than features (dual), more (primal)
def test_fold_predictions_equal_the_closed_form_fit(n):
    rng = np.random.default_rng(0)
    x, y, xh = rng.normal(size=(n, 30)), rng.normal(size=(n, 7)), rng.normal(size=(5, 30))
    preds = _fold_predictions(x, y, xh, RIDGE_GRID)
    for r, p in zip(RIDGE_GRID, preds, strict=True):
        w, b = fit_ridge(x, y, r)
        np.testing.assert_allclose(p, xh @ w.T.astype(np.float64) + b, rtol=1e-4, atol=1e-4)


def test_folds_keep_an_images_views_together_and_mix_classes():
    labels = np.repeat(np.arange(4), 5)  # 4 classes x IPC 5
    fold = image_folds(labels, 5)
    for f in range(5):
        assert sorted(labels[fold == f].tolist()) == [0, 1, 2, 3]  # every class in every fold
    assert sorted(image_folds(np.repeat(np.arange(3), 2), 2).tolist()) == [0, 0, 0, 1, 1, 1]


def test_the_closed_form_fit_minimises_its_objective():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 25)), rng.normal(size=(40, 6))
    w, _ = fit_ridge(x, y, 0.1)
    assert objective(x, y, w, 0.1) <= objective(x, y, w + 1e-3 * rng.normal(size=w.shape), 0.1)


def _toy(noise: float, n_dims: int = 40, seed: int = 0):
    """C classes x IPC images x K views. phi_A = a 3-d image code + view jitter; phi_B = the code
    through a fixed map plus ``n_dims`` dimensions of per-image nuisance of scale ``noise``: with
    none the weakest fit is right, with much the weak fits use the nuisance and miss unseen images."""
    rng = np.random.default_rng(seed)
    c, ipc, k = 4, 5, 6
    labels = np.repeat(np.arange(c), ipc)
    code = rng.normal(size=(len(labels), 3)) + labels[:, None]
    image = np.repeat(np.arange(len(labels)), k)
    a = code[image] + 0.05 * rng.normal(size=(len(image), 3))
    nuisance = noise * rng.normal(size=(len(labels), n_dims))[image]
    b = np.concatenate([a @ rng.normal(size=(3, 6)), nuisance], 1)
    return b, a, image, labels


def test_selection_follows_the_held_out_error_and_breaks_ties_to_the_stronger_fit():
    r, scores = select_ridge(*_toy(noise=0.0), classifier=None)
    assert set(scores) == set(RIDGE_GRID) and scores[r] == min(scores.values())
    assert r == max(g for g in RIDGE_GRID if scores[g] == scores[r])
    assert r < 1.0 and scores[10.0] > scores[r]  # a clean linear map: shrinking only hurts
    r2, scores2 = select_ridge(*_toy(noise=30.0), classifier=None)
    assert scores2[r2] == min(scores2.values()) and r2 > r  # per-image nuisance: a weak fit extrapolates badly
    assert scores2[min(RIDGE_GRID)] > scores2[r2]


def test_the_error_is_taken_where_the_classifier_looks():
    """(5): held-out errors in the logit space of W_c. The scores are the feature-space scores of the
    targets W_c y (a ridge fit is linear in its targets) divided the same way; and where the targets
    carry per-image nuisance the classifier ignores, the feature-space error asks for a strong fit
    that throws away what the classifier reads, the logit-space error does not."""
    b, a, image, labels = _toy(noise=0.0)
    rng = np.random.default_rng(6)
    w = rng.normal(size=(4, 3))
    r, scores = select_ridge(b, a, image, labels, classifier=w)
    r_t, scores_t = select_ridge(b, a @ w.T, image, labels, classifier=None)
    assert r == r_t and scores == pytest.approx(scores_t, rel=1e-9)
    # targets: what W_c reads (the image code through B, linear) + dimensions of per-image nuisance
    # that B does not see and W_c ignores; only a strong ridge predicts those (by their mean)
    nuisance = 5.0 * rng.normal(size=(len(labels), 30))[image]
    y = np.concatenate([a, nuisance], 1)
    w_c = np.concatenate([w, np.zeros((4, 30))], 1)
    r_feat, _ = select_ridge(b, y, image, labels, classifier=None)
    r_logit, _ = select_ridge(b, y, image, labels, classifier=w_c)
    assert r_logit < r_feat
    assert r_logit == select_ridge(b, a, image, labels, classifier=w)[0]


def test_a_single_image_per_class_keeps_the_default():
    """IPC 1: holding an image out removes its class from the fit; no split is honest, so the default."""
    b, a, image, labels = _toy(0.0)
    first = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])  # the first image of each class
    keep = np.isin(image, first)
    remap = {int(i): j for j, i in enumerate(first)}
    assert select_ridge(
        b[keep], a[keep], np.array([remap[int(i)] for i in image[keep]]), labels[first], classifier=None
    ) == (
        DEFAULT_RIDGE,
        {},
    )


# ----------------------------------------------------------------------------- the identity prior (eq. 4)


def test_identity_prior_keeps_an_unchanged_backbone_exactly():
    """B = A: the targets are the inputs; with the prior P = I whatever the strength, while (3)
    maps every direction the few views do not span to the mean (rows < features, as on a device)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 50))
    for r in RIDGE_GRID:
        w, b = fit_ridge(x, x, r, "identity")
        np.testing.assert_allclose(w, np.eye(50), atol=1e-6)
        np.testing.assert_allclose(b, 0, atol=1e-6)
    unseen = rng.normal(size=(5, 50))
    w0, b0 = fit_ridge(x, x, 1e-3)  # the zero prior loses what the 20 rows do not span
    assert np.abs(unseen @ w0.T + b0 - unseen).mean() > 0.5


def test_identity_prior_fits_the_residual_and_minimises_its_own_objective():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 12))
    y = x @ (np.eye(12) + 0.1 * rng.normal(size=(12, 12))).T + 0.3  # a perturbed copy (int8-like)
    w, b = fit_ridge(x, y, 0.1, "identity")
    wr, br = fit_ridge(x, y - x, 0.1)
    np.testing.assert_allclose(w, wr + np.eye(12), atol=1e-5)
    np.testing.assert_allclose(b, br, atol=1e-5)
    step = 1e-3 * rng.normal(size=w.shape)
    assert objective(x, y, w, 0.1, "identity") <= objective(x, y, w + step, 0.1, "identity")
    # shrinking towards I beats shrinking towards 0 on a near-identity map, at a strong ridge
    w0, b0 = fit_ridge(x, y, 10.0)
    wi, bi = fit_ridge(x, y, 10.0, "identity")
    xt = rng.normal(size=(200, 12))
    yt = xt @ (np.eye(12) + 0.1 * rng.normal(size=(12, 12))).T + 0.3
    assert np.mean((xt @ wi.T + bi - yt) ** 2) < np.mean((xt @ w0.T + b0 - yt) ** 2)


def test_identity_prior_cross_validates_on_the_residual_and_refuses_other_widths():
    b, a, image, labels = _toy(noise=0.0)
    x = b[:, :3]
    y = x + 0.01 * np.random.default_rng(4).normal(size=x.shape)
    w = np.random.default_rng(5).normal(size=(4, 3))
    for c in (None, w):
        assert select_ridge(x, y, image, labels, prior="identity", classifier=c) == select_ridge(
            x, y - x, image, labels, classifier=c
        )
    with pytest.raises(ValueError, match="D_B = D_A"):
        fit_ridge(b, a, 0.1, "identity")
    with pytest.raises(ValueError, match="unknown projector prior"):
        fit_ridge(x, y, 0.1, "zero")


def test_torch_and_numpy_fits_agree_under_the_identity_prior():
    torch = pytest.importorskip("torch")
    from edgedd.host.heads import fit_ridge as torch_fit
    from edgedd.host.heads import new_projector

    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 4, 16)).astype(np.float32)
    y = x + 0.2 * rng.normal(size=x.shape).astype(np.float32)
    head = new_projector(16, 16, torch.Generator().manual_seed(0), "cpu")
    fit = torch_fit(head, torch.from_numpy(x), torch.from_numpy(y), 0.1, prior="identity")
    w, b = fit_ridge(x.reshape(40, 16), y.reshape(40, 16), 0.1, "identity")
    np.testing.assert_allclose(fit.head.weight.detach().numpy(), w, atol=1e-5)
    np.testing.assert_allclose(fit.head.bias.detach().numpy(), b, atol=1e-5)


def _real_world(seed=3, n_real=50):
    rng = np.random.default_rng(seed)
    c, d = 4, 20
    means = rng.normal(scale=2.0, size=(c, d))
    yv = np.repeat(np.arange(c), 6)
    x = means[yv] + rng.normal(size=(len(yv), d))
    y = x @ rng.normal(scale=0.3, size=(d, d)) + rng.normal(scale=0.5, size=(len(yv), d))
    wc, bc = rng.normal(size=(c, d)), rng.normal(size=c)
    yr = rng.integers(0, c, n_real)
    xr = means[yr] + rng.normal(scale=2.0, size=(n_real, d))  # real images: further from the class means than the views
    return x, y, xr, yr, wc, bc


@pytest.mark.parametrize("prior", ["none", "identity"])
def test_the_strength_on_real_images_is_the_least_cross_entropy_of_the_fit_on_every_view(prior):
    """select_ridge_on_images (pack's choice for the device, format 1.6) scores each strength by the
    fit on *all* the views, applied to the real images through the golden classifier, by their mean
    cross-entropy: recomputed here the long way, fit by fit. From the best strength it stays there."""
    x, y, xr, yr, wc, bc = _real_world()
    ce = {}
    for s in RIDGE_GRID:
        w, b = fit_ridge(x, y, s, prior)
        z = (xr @ w.T.astype(np.float64) + b) @ wc.T + bc
        ce[s] = cross_entropy(z, yr).mean()
        _, scores = select_ridge_on_images(x, y, xr, yr, wc, bc, s, prior=prior)
        assert sorted(scores) == sorted(RIDGE_GRID)
        assert scores[s]["ce"] == pytest.approx(ce[s], rel=1e-4)
        assert scores[s]["top1"] == pytest.approx((z.argmax(1) == yr).mean())
    best = min(RIDGE_GRID, key=lambda s: (ce[s], -s))
    assert len({round(v, 6) for v in ce.values()}) > 1  # the strengths really differ here
    assert select_ridge_on_images(x, y, xr, yr, wc, bc, best, prior=prior)[0] == best
    r, scores = select_ridge_on_images(x, y, xr, yr, wc, bc, 0.05, prior=prior)  # off the grid: scored too
    assert 0.05 in scores and r in scores


def test_the_strength_moves_off_the_views_choice_only_on_evidence():
    """The views' strength stays unless the best beats it by more than one standard error of the
    paired per-image difference: on 6 real images a better strength is noise; the same images
    repeated 100 times (the same mean difference, a tenth of the error) move it to the best."""
    x, y, xr, yr, wc, bc = _real_world(seed=2, n_real=6)
    kept = 0
    for start in RIDGE_GRID:
        r, scores = select_ridge_on_images(x, y, xr, yr, wc, bc, start)
        best = min(scores, key=lambda s: (scores[s]["ce"], -s))
        if r == start != best:
            kept += 1
            many = select_ridge_on_images(x, y, np.tile(xr, (100, 1)), np.tile(yr, 100), wc, bc, start)[0]
            assert many == best, (start, best, many)
        else:
            assert r == best
    assert kept >= 1  # the world has a strength whose lead over another is noise on 6 images


def test_the_evidence_rule_is_strict_one_standard_error_and_ties_go_to_the_stronger():
    """Equation (7) at its edges, each case one a plausible rewrite of the rule gets wrong."""
    n = 400
    base = np.random.default_rng(0).uniform(0.5, 1.5, n)
    # an exact tie with the views' choice (mean and error both 0): stays (a >= rule would move)
    assert choose_on_evidence({0.1: base, 1.0: base.copy()}, start=0.1) == 0.1
    # two strengths equally better than the start: the stronger (larger r) of the two
    better = base - 0.2
    assert choose_on_evidence({0.01: base, 0.1: better, 1.0: better.copy()}, start=0.01) == 1.0
    # a lead of 1.5 standard errors moves it (a two-error rule would not); 0.5 errors does not
    noise = np.random.default_rng(1).normal(size=n)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # d's sd exactly 1, so one error is 1 / sqrt(n)
    for lead, moves in ((1.5, True), (0.5, False)):
        d = noise + lead / np.sqrt(n)
        got = choose_on_evidence({0.1: base, 3.0: base - d}, start=0.1)
        assert got == (3.0 if moves else 0.1), (lead, got)
    # one image: no error estimate, never moves
    assert choose_on_evidence({0.1: np.array([2.0]), 1.0: np.array([0.1])}, start=0.1) == 0.1


def test_the_strength_is_ranked_by_cross_entropy_not_top1(monkeypatch):
    """Two candidate fits on 200 real images (the classifier the identity, so logits are the fit's
    outputs): r = 1 gets every image right by a hair (top-1 1.0, CE ~ log 2), r = 0.1 gets one wrong
    and the rest by a wide margin (top-1 0.995, CE ~ 0.03). Cross-entropy picks 0.1."""
    import edgedd.device.ridge as ridge

    n, c = 200, 2
    yr = np.arange(n) % c
    hair = np.where(np.eye(c)[yr] > 0, 0.01, 0.0)
    wide = np.where(np.eye(c)[yr] > 0, 8.0, 0.0)
    wide[0] = wide[0][::-1]  # one confident mistake
    monkeypatch.setattr(ridge, "_fold_predictions", lambda x, y, xr, cand: [wide if r == 0.1 else hair for r in cand])
    x, y = np.zeros((4, 3)), np.zeros((4, c))
    r, scores = ridge.select_ridge_on_images(x, y, np.zeros((n, c)), yr, np.eye(c), np.zeros(c), 1.0, grid=(0.1, 1.0))
    assert scores[1.0]["top1"] > scores[0.1]["top1"] and scores[0.1]["ce"] < scores[1.0]["ce"]
    assert r == 0.1


def test_choose_strength_is_the_views_choice_moved_by_enough_finite_real_images():
    """The one rule pack records and evaluate's CI fits at: the views' cross-validation, moved by
    select_ridge_on_images only from MIN_RIDGE_IMAGES (100) real images with finite cross-entropy;
    each refusal says why."""
    for seed in range(50):  # a world where 100 real images move the strength off the views' choice
        x, y, xr, yr, wc, bc = _real_world(seed=seed, n_real=100)
        image, labels = np.arange(len(x)), np.repeat(np.arange(4), 6)
        views = select_ridge(x, y, image, labels, classifier=wc)[0]
        moved = select_ridge_on_images(x, y, xr, yr, wc, bc, views)[0]
        if moved != views:
            break
    assert moved != views
    got = choose_strength(x, y, image, labels, wc, bc, (xr, yr))
    assert (got.ridge, got.views, got.images, got.why_not) == (moved, views, 100, None)
    assert got.heldout == select_ridge_on_images(x, y, xr, yr, wc, bc, views)[1]
    few = choose_strength(x, y, image, labels, wc, bc, (xr[:99], yr[:99]))
    assert (few.ridge, few.heldout, few.images) == (views, None, 0) and few.why_not.startswith("only 99 ")
    none = choose_strength(x, y, image, labels, wc, bc, None)
    assert none.ridge == views and none.why_not == "no held-out real images"
    bad = xr.copy()
    bad[0] = np.nan
    nan = choose_strength(x, y, image, labels, wc, bc, (bad, yr))
    assert nan.ridge == views and nan.heldout is None and "not finite" in nan.why_not


def test_a_recorded_strength_is_read_and_only_as_a_number():
    assert recorded_ridge({"reference": {"device_ridge": 0.1}}) == 0.1
    assert recorded_ridge({"reference": {"device_ridge": None}}) is None
    assert recorded_ridge({"reference": {}}) is None and recorded_ridge({}) is None  # before format 1.6
