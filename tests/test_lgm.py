"""LGM: the loss equals an independent closed-form computation, and its expected gradient over
random heads is parallel to the statistical flow (the paper's core argument for SFM)."""

import json

import numpy as np
import torch
from conftest import tiny_distill_args
from typer.testing import CliRunner

from edgedd.cli.host import app
from edgedd.distillation.lgm import StepBatches, head_gradient, lgm_loss, random_head
from edgedd.distillation.losses import class_centres, flow


def _closed_form_grad(z, y, w, b):
    """numpy: d CE / dW = (P - Y)^T z / B, d CE / db = mean(P - Y)."""
    logits = z @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(w.shape[0])[y]
    return np.concatenate([((p - onehot).T @ z / len(z)).ravel(), (p - onehot).mean(0)])


def test_lgm_loss_matches_independent_reference():
    g = torch.Generator().manual_seed(0)
    c, d = 4, 6
    z_syn = torch.randn(8, d, generator=g, dtype=torch.float64)
    y_syn = torch.arange(c).repeat_interleave(2)
    z_real = torch.randn(12, d, generator=g, dtype=torch.float64) * 2
    y_real = torch.randint(0, c, (12,), generator=g)
    w = (torch.randn(c, d, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    b = (torch.randn(c, generator=g, dtype=torch.float64) * 0.1).requires_grad_(True)
    got = lgm_loss(z_syn.requires_grad_(True), y_syn, z_real, y_real, w, b)
    gr = _closed_form_grad(z_real.numpy(), y_real.numpy(), w.detach().numpy(), b.detach().numpy())
    gs = _closed_form_grad(z_syn.detach().numpy(), y_syn.numpy(), w.detach().numpy(), b.detach().numpy())
    want = 1 - gr @ gs / (np.linalg.norm(gr) * np.linalg.norm(gs))
    assert abs(got.item() - want) < 1e-12
    # and the loss back-propagates into the synthetic features (the graph LGM needs)
    (gz,) = torch.autograd.grad(got, z_syn)
    assert gz.abs().sum() > 0


def test_expected_lgm_gradient_is_parallel_to_the_flow():
    g = torch.Generator().manual_seed(0)
    c, ipc, d = 5, 4, 32
    centres = torch.randn(c, d, generator=g) * 3
    z = centres.repeat_interleave(ipc, 0) + torch.randn(c * ipc, d, generator=g)  # class-balanced batch
    y = torch.arange(c).repeat_interleave(ipc)
    heads = 2000
    mean_gw = torch.zeros(c, d)
    single = []
    for _ in range(heads):
        w, b = random_head(c, d, g)
        gw = head_gradient(z, y, w, b, create_graph=False)[: c * d].view(c, d)
        mean_gw += gw / heads
        single.append(gw)
    f = flow(class_centres(z, c))
    cos = torch.nn.functional.cosine_similarity(mean_gw.flatten(), f.flatten(), dim=0).item()
    assert cos > 0.95, cos
    # E[g_W][c] = (C - 1) / C^2 * F[c] at P ~ 1/C: the scale too, not only the direction
    torch.testing.assert_close(mean_gw, f * (c - 1) / c**2, rtol=0.05, atol=0.02)


def test_step_batches_are_resumable():
    full = list(StepBatches(100, 7, seed=3, start=0, stop=10))
    tail = list(StepBatches(100, 7, seed=3, start=6, stop=10))
    assert full[6:] == tail and len(full) == 10 and all(len(b) == 7 for b in full)


def test_distill_lgm_through_the_cli(image_folder, tmp_path):
    r = CliRunner().invoke(
        app,
        tiny_distill_args(
            image_folder,
            tmp_path / "lgm",
            "--method",
            "lgm",
            "--iterations",
            "3",
            "--augs-per-batch",
            "2",
            "--init",
            "noise",
            "--json",
        ),
    )
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["method"] == "lgm" and s["config"]["augs_per_batch"] == 2
    assert s["stage2_memory"]["kind"] in ("cpu_rss_hwm", None)
    # 3 iterations at 32 px from noise: full resolution from step 1, its Adam moments exist from then,
    # so the step's own working memory is taken at step 2; the phase's peak covers it
    step = s["stage2_step_memory"]
    assert step["step"] == 2 and step["kind"] == s["stage2_memory"]["kind"]
    if step["kind"] is not None:
        assert s["stage2_memory"]["peak_mb"] >= step["peak_mb"] and step["working_mb"] >= 0
    r = CliRunner().invoke(
        app, tiny_distill_args(image_folder, tmp_path / "lgm10", "--method", "lgm", "--iterations", "1", "--json")
    )
    assert json.loads(r.stdout)["config"]["augs_per_batch"] == 10  # LGM's reference default
