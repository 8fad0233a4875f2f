"""Projector-aware distillation (edgedd.distillation.projector_aware): its ridge is the device's, its loss
reaches the images, and a distill with a surrogate runs end to end and records it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgedd.core.config import DistillConfig, StageIConfig
from edgedd.core.errors import EdgeddError
from edgedd.device.ridge import fit_ridge
from edgedd.distillation.projector_aware import Surrogate, inherited_ce, projector_loss, ridge_fit, validate


@pytest.mark.parametrize(
    "n,d_b,d_a,prior", [(30, 50, 20, "none"), (80, 40, 16, "none"), (24, 40, 40, "identity"), (90, 40, 40, "identity")]
)
@pytest.mark.parametrize("r", [1e-3, 0.1, 1.0, 10.0])
def test_torch_ridge_is_the_device_ridge(n, d_b, d_a, prior, r):
    rng = np.random.default_rng(n + d_b)
    x = rng.normal(size=(n, d_b)) * rng.uniform(0.1, 3, size=d_b) + rng.normal(size=d_b)
    y = x[:, :d_a] @ rng.normal(size=(d_a, d_a)) + 0.3 * rng.normal(size=(n, d_a)) + 2.0
    w, b = fit_ridge(x, y, r, prior)
    tw, tb = ridge_fit(torch.from_numpy(x), torch.from_numpy(y), r, prior)
    scale = max(np.abs(w).max(), np.abs(b).max(), 1.0)
    assert np.abs(tw.numpy() - w).max() / scale < 1e-5
    assert np.abs(tb.numpy() - b).max() / scale < 1e-5


def _tiny(dim: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32, dim),
    ).requires_grad_(False)


def test_loss_gradient_reaches_the_images_and_follows_the_labels(tiny_backbone):
    _, info = tiny_backbone
    model_a, model_b = _tiny(12, 0), _tiny(10, 1)
    images = torch.rand(6, 3, 32, 32, requires_grad=True)  # 3 classes x 2
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(40, 10)
    labels = torch.arange(3).repeat(14)[:40]
    w, b = torch.randn(3, 12), torch.zeros(3)
    cfg = DistillConfig(surrogates=("x",), surrogate_views=3, surrogate_real=40)
    loss = projector_loss(images, model_a, info, [Surrogate("x", model_b, info, real)], labels, (w, b), cfg, gen)
    loss.backward()
    assert torch.isfinite(loss) and images.grad is not None and images.grad.abs().sum() > 0
    # one view per image is the centre crop: the projector, hence the loss over the whole pool, is
    # then the same whatever the generator draws
    one = DistillConfig(surrogates=("x",), surrogate_views=1, surrogate_real=40)
    l1, l2 = (
        projector_loss(
            images,
            model_a,
            info,
            [Surrogate("x", model_b, info, real)],
            labels,
            (w, b),
            one,
            torch.Generator().manual_seed(s),
        )
        for s in (1, 2)
    )
    assert l1.item() == pytest.approx(l2.item(), rel=1e-5)
    # the same projector, real labels permuted: a different loss (the labels reach it)
    x_syn, y_syn = torch.randn(18, 10), torch.randn(18, 12)
    a = inherited_ce(x_syn, y_syn, real, labels, w, b, (0.1, 1.0))
    c = inherited_ce(x_syn, y_syn, real, labels.roll(1), w, b, (0.1, 1.0))
    assert float(a) != pytest.approx(float(c))


def test_inherited_ce_folds_the_classifier_into_the_projector_without_changing_loss_or_gradient():
    """z (W P)^T + (W p + b) is W (P z + p) + b: the same loss and image gradients as the unfolded form."""
    g = torch.Generator().manual_seed(3)
    x0, y0 = torch.randn(12, 9, generator=g), torch.randn(12, 7, generator=g)
    real, labels = torch.randn(30, 9, generator=g), torch.randint(0, 4, (30,), generator=g)
    w, b = torch.randn(4, 7, generator=g), torch.randn(4, generator=g)

    def unfolded(x, y):
        out = []
        for r in (0.1, 1.0):
            p, pb = ridge_fit(x.double(), y.double(), r)
            out.append(
                torch.nn.functional.cross_entropy((real.double() @ p.T + pb) @ w.double().T + b.double(), labels)
            )
        return torch.stack(out).mean().float()

    grads = []
    for fn in (lambda x, y: inherited_ce(x, y, real, labels, w, b, (0.1, 1.0)), unfolded):
        x, y = x0.clone().requires_grad_(True), y0.clone().requires_grad_(True)
        loss = fn(x, y)
        loss.backward()
        grads.append((loss.detach(), x.grad, y.grad))
    for a, c in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "field,value",
    [
        ("surrogate_weight", float("nan")),
        ("surrogate_weight", -1.0),
        ("surrogate_views", 0),
        ("surrogate_ridge", ()),
        ("surrogate_ridge", (0.0,)),
        ("surrogates", ("edgedd/edge-cnn@big",)),
    ],
)
def test_bad_settings_are_refused(field, value):
    with pytest.raises(EdgeddError):
        validate(DistillConfig(**{field: value}))


def test_distill_with_a_surrogate(image_folder, tmp_path):
    from edgedd.distillation.pipeline import RunOptions, distill

    run = tmp_path / "run"
    cfg = DistillConfig(ipc=2, iterations=4, surrogates=("edgedd/edge-cnn@32",), surrogate_views=2, surrogate_real=12)
    s = distill(
        str(image_folder),
        "test_vit",
        run,
        weights="random",
        config=cfg,
        stage1_config=StageIConfig(golden_views=1, golden_epochs=2),
        crop_res=32,
        syn_res=32,
        options=RunOptions(device="cpu", num_workers=0, progress=False, preview_every=0),
    )
    pa = s["projector_aware"]
    assert pa["surrogates"] == ["edgedd/edge-cnn@32"] and pa["steps"] == 4
    assert np.isfinite(pa["loss_first"]) and np.isfinite(pa["loss_last"])
    written = json.loads((run / "synthetic.json").read_text())["config"]
    assert written["surrogates"] == ["edgedd/edge-cnn@32"] and written["surrogate_weight"] == 1.0
    # without the term the summary says it was off
    plain = distill(
        str(image_folder),
        "test_vit",
        tmp_path / "plain",
        weights="random",
        config=DistillConfig(ipc=2, iterations=4),
        stage1_config=StageIConfig(golden_views=1, golden_epochs=2),
        crop_res=32,
        syn_res=32,
        options=RunOptions(device="cpu", num_workers=0, progress=False, preview_every=0),
    )
    assert plain["projector_aware"] is None


def test_the_distillation_backbone_is_no_surrogate(image_folder, tmp_path):
    from edgedd.distillation.pipeline import RunOptions, distill

    with pytest.raises(EdgeddError, match="distillation backbone itself"):
        distill(
            str(image_folder),
            "edgedd/edge-cnn",
            tmp_path / "run",
            config=DistillConfig(ipc=2, iterations=1, surrogates=("edgedd/edge-cnn",)),
            stage1_config=StageIConfig(golden_views=1, golden_epochs=2),
            options=RunOptions(device="cpu", num_workers=0, progress=False, preview_every=0),
        )
