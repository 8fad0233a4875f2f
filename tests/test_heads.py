"""The one linear-head trainer (edgedd.host.heads): the converged recipe reaches its optimum at small N
where METHOD.md's reference recipe does not, and the closed-form projector is the device's fit."""

import numpy as np
import torch

from edgedd.core.config import StageIConfig
from edgedd.device.ridge import fit_ridge as fit_projector_ridge
from edgedd.distillation.stage1 import holdout_split, train_golden
from edgedd.host.heads import Fit, ce_loss, fit_lbfgs, fit_ridge, mse_loss, new_probe, new_projector, train_reference


class _Cached:
    """One random view per image per batch from (n, V, D) features (the reference recipe's sampler)."""

    def __init__(self, feats):
        self.feats, self.n = feats, feats[0].shape[0]

    def epoch(self, gen):
        self.pick = torch.randint(self.feats[0].shape[1], (self.n,), generator=gen)
        return torch.randperm(self.n, generator=gen)

    def batch(self, idx, gen):
        return tuple(f[idx, self.pick[idx]] for f in self.feats)


def _toy(n_classes=10, v=16, d=32, seed=0, scale=0.5):
    """N = 10 images (one per class), V views each: separable (class means far apart, small view noise)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n_classes, d, generator=g) * scale
    x = means[:, None] + 0.1 * scale * torch.randn(n_classes, v, d, generator=g)
    return x, torch.arange(n_classes)


def test_converged_reaches_low_loss_at_n10_where_reference_does_not():
    x, y = _toy()
    bound = 0.1  # the converged recipe's training CE must end below this; ln(10) = 2.30 is chance
    conv = fit_lbfgs(new_probe(32, 10, torch.Generator().manual_seed(0), "cpu"), (x,), ce_loss(y), l2=1e-3)
    batch = 10
    ref = train_reference(
        new_probe(32, 10, torch.Generator().manual_seed(0), "cpu"),
        _Cached((x,)),
        ce_loss(y),
        epochs=1000,
        batch=batch,
        lr=1e-3 * batch / 256,
        gen=torch.Generator().manual_seed(0),
    )
    assert conv.loss_final < bound, conv.report()
    assert ref.loss_final > 10 * bound, ref.report()  # METHOD.md's lr 3.9e-5 at N = 10: barely moves
    assert not conv.stalled
    assert (conv.head(x.reshape(-1, 32)).argmax(1) == y.repeat_interleave(16)).all()


def test_lbfgs_is_scale_free_and_init_free():
    """Eq. (1) on standardised features: scaling every feature by k changes W by 1/k, logits not;
    the optimum is unique (up to a constant added to every bias, which softmax ignores), so another
    init gives the same probabilities."""
    x, y = _toy(seed=1)
    a = fit_lbfgs(new_probe(32, 10, torch.Generator().manual_seed(0), "cpu"), (x,), ce_loss(y), l2=1e-2)
    b = fit_lbfgs(new_probe(32, 10, torch.Generator().manual_seed(5), "cpu"), (x * 100,), ce_loss(y), l2=1e-2)
    pa = torch.softmax(a.head(x.reshape(-1, 32)), 1)
    pb = torch.softmax(b.head(100 * x.reshape(-1, 32)), 1)
    assert torch.allclose(pa, pb, atol=1e-3), (pa - pb).abs().max()


def test_stalled_flag():
    h = torch.nn.Linear(2, 2)
    assert Fit(h, 2.30, 2.29, 1000).stalled
    assert not Fit(h, 2.30, 0.5, 1000).stalled


def test_chunked_lbfgs_equals_one_chunk():
    x, y = _toy(seed=2)
    one = fit_lbfgs(new_probe(32, 10, torch.Generator().manual_seed(0), "cpu"), (x,), ce_loss(y), l2=1e-3)
    many = fit_lbfgs(new_probe(32, 10, torch.Generator().manual_seed(0), "cpu"), (x,), ce_loss(y), l2=1e-3, chunk=48)
    assert abs(one.loss_final - many.loss_final) < 1e-4
    assert torch.allclose(
        one.head.weight, many.head.weight, atol=5e-3
    )  # float sums in another order: a few L-BFGS iterations apart


def test_ridge_is_the_devices_fit_and_recovers_the_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, 12, generator=g)
    proj = fit_ridge(new_projector(12, 12, g, "cpu"), x, x.clone(), l2=1e-9)
    assert torch.allclose(proj.head.weight, torch.eye(12), atol=1e-4)
    assert proj.loss_final < 1e-8 < proj.loss_start
    y = torch.randn(40, 4, 7, generator=g)
    fit = fit_ridge(new_projector(12, 7, g, "cpu"), x, y, l2=1e-3)
    w, b = fit_projector_ridge(x.reshape(-1, 12).numpy(), y.reshape(-1, 7).numpy(), 1e-3)
    np.testing.assert_allclose(fit.head.weight.detach().numpy(), w, atol=1e-5)
    np.testing.assert_allclose(fit.head.bias.detach().numpy(), b, atol=1e-5)
    ref = train_reference(new_projector(12, 7, g, "cpu"), _Cached((x, y)), mse_loss, epochs=5, batch=10, lr=1e-3, gen=g)
    assert fit.loss_final <= ref.loss_final


def test_holdout_split_is_stratified_and_disjoint():
    labels = np.repeat(np.arange(3), [10, 20, 1])
    train, held = holdout_split(labels, 0.1, 0)
    assert len(np.intersect1d(train, held)) == 0 and len(train) + len(held) == len(labels)
    assert np.bincount(labels[held], minlength=3).tolist() == [1, 2, 0]


def test_golden_recipes():
    """Blobs where augmented views are noise: the converged recipe picks its inputs and L2 on the
    held-out slice, fits to a low loss and scores near-perfect; the reference recipe reports its loss."""
    rng = np.random.default_rng(0)
    c, n, d = 4, 200, 8
    labels = rng.integers(0, c, n)
    means = rng.normal(0, 2, (c, d))
    centre = means[labels] + rng.normal(0, 0.5, (n, d))
    views = rng.normal(0, 3, (n, 3, d))  # views carry no class information
    feats = np.concatenate([centre[:, None], views], axis=1).astype(np.float32)
    w, b, rep = train_golden(feats, labels, c, StageIConfig(), torch.device("cpu"), progress=False)
    assert rep["recipe"] == "converged" and rep["inputs"] == "centre"
    assert rep["heldout_top1"] >= 0.9 and rep["train_top1_centre_crop"] >= 0.95
    assert rep["loss_final"] < 0.5 * rep["loss_start"] and len(rep["candidates"]) == 8
    _, _, ref = train_golden(
        feats, labels, c, StageIConfig(golden_recipe="reference", golden_epochs=2), torch.device("cpu"), progress=False
    )
    assert ref["recipe"] == "reference" and ref["heldout_top1"] is None and "loss_final" in ref
