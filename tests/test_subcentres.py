"""sfm_sub: the per-image sub-centre loss (value and gradient), the k-means sub-centres and their
one-to-one matching (deterministic, right on a toy), and a tiny end-to-end distill."""

import json

import numpy as np
import pytest
import torch

from edgedd.distillation.losses import anchor_loss, centre_separation, class_centres, flow, subcentre_loss
from edgedd.distillation.subcentres import coreset_positions, greedy_match, kmeans, subcentre_targets


def _toy(c=3, ipc=4, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(c * ipc, d, generator=g, dtype=torch.float64)
    t = torch.randn(c * ipc, d, generator=g, dtype=torch.float64)
    mu = torch.randn(c, d, generator=g, dtype=torch.float64) * 3
    return z, t, mu


def test_subcentre_loss_value_is_anchor_plus_per_image_term():
    z, t, mu = _toy()
    got = subcentre_loss(z, flow(mu), mu, t, beta=2.0, gamma=3.0)
    per_image = ((z - t) ** 2).sum(1).mean() / centre_separation(mu)
    torch.testing.assert_close(got, anchor_loss(z, flow(mu), mu, 2.0) + 3.0 * per_image)
    assert (got - anchor_loss(z, flow(mu), mu, 2.0)).item() > 0.1  # the term is there


def test_subcentre_loss_zero_only_on_the_targets_and_gradient_points_at_them():
    z, t, mu = _toy()
    mu_t = class_centres(t, 3)  # targets whose class means are the real centres: the loss's zero
    assert abs(subcentre_loss(t, flow(mu_t), mu_t, t, 10.0, 10.0).item()) < 1e-10
    # the class means match but the images do not sit on their own targets: anchored SFM is 0, sfm_sub is not
    shuffled = t.view(3, 4, -1).flip(1).reshape(12, -1)
    assert abs(anchor_loss(shuffled, flow(mu_t), mu_t, 10.0).item()) < 1e-10
    assert subcentre_loss(shuffled, flow(mu_t), mu_t, t, 10.0, 10.0).item() > 0.1
    # the per-image term's gradient (beta = 0 and a matched flow isolate it) is 2 gamma (z_i - s_i) / (N d2)
    x = shuffled.clone().requires_grad_(True)
    subcentre_loss(x, flow(mu_t), mu_t, t, 0.0, 5.0).backward()
    expect = 2 * 5.0 * (shuffled - t) / (12 * centre_separation(mu_t))
    torch.testing.assert_close(x.grad, expect, atol=1e-8, rtol=1e-6)  # the flow cosine is flat at its optimum


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [6.0, 6.0], [0.0, 6.0]])
    x = np.concatenate([rng.normal(m, 0.2, (30, 2)) for m in means])
    a, b = kmeans(x, 3, (0, 1)), kmeans(x, 3, (0, 1))
    np.testing.assert_array_equal(a, b)
    # every true mean has a centre within 0.2, each centre the mean of its own cluster's points
    near = np.linalg.norm(a[:, None] - means[None], axis=2)
    assert sorted(near.argmin(1).tolist()) == [0, 1, 2] and near.min(1).max() < 0.2
    # fewer rows than centres: the rows repeat
    np.testing.assert_array_equal(kmeans(x[:2], 3, (0,)), x[[0, 1, 0]])


def test_greedy_match_is_one_to_one_and_takes_the_nearest():
    cent = np.array([[0.0, 0.0], [5.0, 5.0], [0.0, 5.0]])
    z = np.array([[0.1, 4.9], [0.2, 0.1], [4.0, 4.0]])
    np.testing.assert_array_equal(greedy_match(z, cent), [2, 0, 1])
    # two rows nearest the same centre: the closer one keeps it, the other takes what is left
    perm = greedy_match(np.array([[0.0, 0.1], [0.0, 0.3], [9.0, 9.0]]), cent)
    assert perm[0] == 0 and sorted(perm.tolist()) == [0, 1, 2]


def test_subcentre_targets_class_major_and_matched():
    rng = np.random.default_rng(1)
    feats = np.concatenate([rng.normal(m, 0.1, (10, 2)) for m in ([0, 0], [0, 4], [10, 0], [10, 4])])
    labels = np.repeat([0, 0, 1, 1], 10)  # class 0: two clusters near x = 0; class 1: two near x = 10
    z0 = np.array([[0, 4.0], [0, 0.0], [10, 0.0], [10, 4.0]])
    t = subcentre_targets(feats, labels, z0, 2, 2, seed=0).numpy()
    assert t.shape == (4, 2)
    np.testing.assert_allclose(t, z0, atol=0.1)  # each image got the sub-centre it started nearest


def test_coreset_positions_take_the_real_image_nearest_each_subcentre():
    """--init coreset: per class one distinct image per k-means sub-centre, the nearest, named by its
    dataset position; a class with at most IPC images takes them all."""
    from edgedd.distillation.trainingset import TrainingFeatures

    rng = np.random.default_rng(2)
    means = ([0, 0], [0, 4], [10, 0], [10, 4])
    feats = np.concatenate([rng.normal(m, 0.3, (10, 2)) for m in means] + [rng.normal([20, 0], 0.3, (2, 2))])
    labels = np.repeat([0, 0, 1, 1, 2], [10, 10, 10, 10, 2])
    pos = np.arange(len(feats)) * 3 + 1  # dataset positions are not row numbers (unreadable images skipped)
    tf = TrainingFeatures(pos, labels, feats)
    picks = coreset_positions(tf, 3, 2, seed=0)
    for c in (0, 1):
        rows = np.flatnonzero(labels == c)
        cent = kmeans(feats[rows], 2, seed=(0, c))
        got = tf.at(picks[c])
        assert len(set(picks[c].tolist())) == 2 and (labels[np.searchsorted(pos, picks[c])] == c).all()
        # each pick is, of the class's images, the one nearest its centre (the clusters are far apart)
        d = ((feats[rows][None] - cent[:, None]) ** 2).sum(-1)
        np.testing.assert_array_equal(got, feats[rows][d.argmin(1)])
        near = np.linalg.norm(got[:, None] - np.array(means[2 * c : 2 * c + 2])[None], axis=2)
        assert sorted(near.argmin(1).tolist()) == [0, 1] and near.min(1).max() < 1  # one per cluster
    np.testing.assert_array_equal(picks[2], pos[labels == 2])  # 2 images, IPC 2: both
    assert [p.tolist() for p in picks] == [p.tolist() for p in coreset_positions(tf, 3, 2, seed=0)]


def test_init_coreset_starts_from_the_picked_training_images(image_folder, tmp_path, tiny_backbone):
    """The run's step-0 set is exactly the training canvases coreset_positions names from phi_A of
    the training images (the same random-init backbone: seed 0), class-major, and the run records
    the init."""
    from conftest import tiny_distill_args
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from edgedd.cli.host import app
    from edgedd.core.images import scan_image_folder
    from edgedd.distillation.trainingset import training_features
    from edgedd.host.data import CanvasDataset

    out = tmp_path / "r"
    args = tiny_distill_args(image_folder, out, "--ipc", "2", "--iterations", "2", "--init", "coreset", "--json")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["config"]["init"] == "coreset"
    start = load_file(out / "initial.safetensors")["images"]
    model, info = tiny_backbone
    src = scan_image_folder(image_folder)
    picks = coreset_positions(training_features(model, info, src, "cpu", amp=False), 3, 2, seed=0)
    assert [src.labels[p].tolist() for p in picks] == [[0, 0], [1, 1], [2, 2]]
    canvases = CanvasDataset(src, 32, "bicubic")
    want = np.stack([canvases[int(i)][0] for i in np.concatenate(picks)]).astype(np.float32) / 255
    got = start.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, want.clip(0.01, 0.99), atol=1e-6)  # the pyramid clamps to [0.01, 0.99]
    # sfm_sub's targets: image i takes centre i, the same pairing as matching the starts' own features
    from edgedd.core.config import DistillConfig
    from edgedd.distillation.stage2 import initial_images, real_targets
    from edgedd.distillation.trainingset import centre_features

    feats = training_features(model, info, src, "cpu", amp=False)
    cfg = DistillConfig(method="sfm_sub", ipc=2, init="coreset", syn_res=32, amp=False)
    z0 = centre_features(model, info, initial_images(src, cfg, "bicubic", feats), amp=False).double().numpy()
    matched = subcentre_targets(feats.feats, feats.labels, z0, 3, 2, seed=0)
    torch.testing.assert_close(real_targets(model, info, cfg, src, "cpu", feats).sub, matched)


def test_tiny_distill_with_sfm_sub(image_folder, tmp_path):
    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    r = CliRunner().invoke(
        app,
        tiny_distill_args(
            image_folder,
            tmp_path / "r",
            "--ipc",
            "2",
            "--iterations",
            "4",
            "--method",
            "sfm_sub",
            "--gamma",
            "5",
            "--json",
        ),
    )
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["method"] == "sfm_sub" and s["config"]["gamma"] == 5.0
    assert np.isfinite(s["final_loss"]) and s["final_loss"] > 0


@pytest.mark.parametrize("bad", ["-1", "nan"])
def test_bad_gamma_is_one_line(image_folder, tmp_path, bad):
    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    r = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / "r", "--method", "sfm_sub", "--gamma", bad))
    assert r.exit_code in (1, 2) and "Traceback" not in r.output


def test_ridge_probe_loss_is_the_kernel_ridge_error_and_rewards_separable_sets():
    from edgedd.distillation.losses import probe_targets, ridge_probe_loss

    g = torch.Generator().manual_seed(0)
    c, ipc, d = 3, 4, 5
    means = torch.randn(c, d, generator=g, dtype=torch.float64) * 4
    real_y = torch.arange(c).repeat_interleave(20)
    real = means[real_y] + torch.randn(60, d, generator=g, dtype=torch.float64)
    good = means.repeat_interleave(ipc, 0) + 0.3 * torch.randn(c * ipc, d, generator=g, dtype=torch.float64)
    bad = means[(torch.arange(c).repeat_interleave(ipc) + 1) % c]  # every image sits on the next class's mean
    pt = probe_targets(real, real_y, c)
    lg, lb = ridge_probe_loss(good, pt, 1e-2), ridge_probe_loss(bad, pt, 1e-2)
    assert lg.item() < 0.5 < lb.item()
    # the value is the primal ridge fit's: W = (X^T X + lam I)^-1 X^T Y equals the dual form (5)
    mean, sd = real.mean(0, keepdim=True), real.std(0, keepdim=True)
    x = torch.cat([(good - mean) / sd, torch.ones(12, 1, dtype=torch.float64)], 1)
    r = torch.cat([(real - mean) / sd, torch.ones(60, 1, dtype=torch.float64)], 1)
    y = torch.nn.functional.one_hot(torch.arange(c).repeat_interleave(ipc), c).double() - 1 / c
    lam = 1e-2 * (x * x).sum(1).mean()
    w = torch.linalg.solve(x.T @ x + lam * torch.eye(d + 1, dtype=torch.float64), x.T @ y)
    ry = torch.nn.functional.one_hot(real_y, c).double() - 1 / c
    torch.testing.assert_close(lg, (r @ w - ry).pow(2).sum(1).mean())
    # and it is differentiable in the synthetic features
    z = good.clone().requires_grad_(True)
    ridge_probe_loss(z, probe_targets(real, real_y, c), 1e-2).backward()
    assert z.grad.abs().max() > 0


def test_ridge_probe_loss_is_not_ruled_by_a_dimension_the_real_features_leave_still():
    """A dimension constant on the real features (sd 0: a unit the real centre crops never fire) must
    not decide the probe: a set that fires it a little (as a crop of a synthetic image can) scores as
    the same set without it, not as a probe that fits nothing (the 1 - 1/C of predicting 0)."""
    from edgedd.distillation.losses import probe_targets, ridge_probe_loss

    g = torch.Generator().manual_seed(1)
    c, ipc, d = 3, 4, 6
    means = torch.randn(c, d, generator=g, dtype=torch.float64) * 4
    means[:, -1] = 0.0
    real_y = torch.arange(c).repeat_interleave(20)
    real = means[real_y] + torch.randn(60, d, generator=g, dtype=torch.float64)
    real[:, -1] = 0.0  # the still dimension
    good = means.repeat_interleave(ipc, 0) + 0.3 * torch.randn(c * ipc, d, generator=g, dtype=torch.float64)
    fired = good.clone()
    fired[:, -1] = 1e-3 * torch.rand(c * ipc, generator=g, dtype=torch.float64)
    pt = probe_targets(real, real_y, c)
    lg, lf = ridge_probe_loss(good, pt, 1e-1), ridge_probe_loss(fired, pt, 1e-1)
    assert lg.item() < 0.5
    assert abs(lf.item() - lg.item()) < 0.01


@pytest.mark.parametrize("method", ["sfm_probe", "sfm_sub_probe"])
def test_tiny_distill_with_the_probe_term(image_folder, tmp_path, method):
    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    r = CliRunner().invoke(
        app,
        tiny_distill_args(
            image_folder,
            tmp_path / "r",
            "--ipc",
            "2",
            "--iterations",
            "4",
            "--method",
            method,
            "--kappa",
            "3",
            "--json",
        ),
    )
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["method"] == method and s["config"]["kappa"] == 3.0 and np.isfinite(s["final_loss"])


def test_sfm_sub_probe_is_sfm_sub_plus_the_probe_term():
    # L_sub_probe = L_sub + kappa L_probe, and the anchor-plus-probe of sfm_probe is the other sum:
    # each method's loss is built from the same two pieces (stage2.feature_loss)
    from edgedd.core.config import DistillConfig
    from edgedd.distillation.losses import probe_targets, ridge_probe_loss
    from edgedd.distillation.stage2 import RealTargets, feature_loss

    g = torch.Generator().manual_seed(0)
    c, ipc, d = 3, 2, 8
    z, centres = torch.randn(c * ipc, d, generator=g), torch.randn(c, d, generator=g)
    t = RealTargets(
        sub=torch.randn(c * ipc, d, generator=g),
        probe=probe_targets(torch.randn(30, d, generator=g), torch.arange(c).repeat(10), c),
    )
    loss = {
        m: feature_loss(z, DistillConfig(method=m, kappa=3.0), flow(centres), centres, t)
        for m in ("sfm_sub", "sfm_probe", "sfm_sub_probe", "sfm_anchor")
    }
    probe = ridge_probe_loss(z, t.probe, DistillConfig.probe_ridge)
    assert probe > 0.01
    torch.testing.assert_close(loss["sfm_sub_probe"], loss["sfm_sub"] + 3.0 * probe)
    torch.testing.assert_close(loss["sfm_probe"], loss["sfm_anchor"] + 3.0 * probe)


@pytest.mark.parametrize("method", ["sfm_sub", "sfm_probe", "sfm_sub_probe"])
def test_chunked_step_matches_one_pass_with_real_targets(tiny_backbone, method):
    from edgedd.backbones.forward import backbone_autocast
    from edgedd.core.config import DistillConfig
    from edgedd.distillation.chunked import chunked_step
    from edgedd.distillation.losses import probe_targets
    from edgedd.distillation.pyramid import Pyramid
    from edgedd.distillation.stage2 import RealTargets, feature_loss, sfm_step_loss

    model, info = tiny_backbone
    c, ipc, d = 3, 2, info.num_features
    cfg = DistillConfig(method=method, ipc=ipc, augs_per_batch=2, syn_res=32, crop_res=32)
    g = torch.Generator().manual_seed(0)
    pyr = Pyramid.init(c * ipc, 32, g)
    for _ in range(3):
        pyr.extend(g)
    centres = torch.randn(c, d, generator=g)
    targets = RealTargets(
        sub=torch.randn(c * ipc, d, generator=g),
        probe=probe_targets(torch.randn(30, d, generator=g), torch.arange(c).repeat(10), c),
    )

    def grads(fn):
        for lv in pyr.levels:
            lv.grad = None
        loss = fn(torch.Generator().manual_seed(42))
        return loss.item(), [lv.grad.clone() for lv in pyr.levels]

    def one_pass(gen):
        loss = sfm_step_loss(model, pyr.decode(), cfg, info, gen, flow(centres), centres, targets)
        loss.backward()
        return loss

    l1, g1 = grads(one_pass)
    l2, g2 = grads(
        lambda gen: chunked_step(
            model,
            pyr,
            cfg,
            info,
            gen,
            lambda z: feature_loss(z, cfg, flow(centres), centres, targets),
            5,
            backbone_autocast(torch.device("cpu"), False),
        )
    )
    assert abs(l1 - l2) < 1e-5 * max(1.0, abs(l1))
    for a, b in zip(g1, g2, strict=True):
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_loss_augmentation_options_reach_the_config(image_folder, tmp_path):
    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    r = CliRunner().invoke(
        app,
        tiny_distill_args(
            image_folder, tmp_path / "r", "--iterations", "2", "--crop-min", "0.4", "--noise-p", "0.3", "--json"
        ),
    )
    assert r.exit_code == 0, r.stderr
    aug = json.loads(r.stdout)["config"]["augment"]
    assert aug["crop_scale"] == [0.4, 1.0] and aug["noise_p"] == 0.3  # neither is any method's default
    bad = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / "b", "--crop-min", "0"))
    assert bad.exit_code == 1 and "crop area" in bad.output and "Traceback" not in bad.output


def test_ridge_probe_loss_primal_form_matches_the_dual():
    # more synthetic images than feature dimensions (N > D + 1) takes the (D + 1) x (D + 1) primal
    # solve; its loss and gradient must be the dual's (written out here from equation (5))
    import torch.nn.functional as F

    from edgedd.distillation.losses import probe_targets, ridge_probe_loss

    g = torch.Generator().manual_seed(3)
    c, ipc, d, ridge = 3, 8, 5, 0.1  # N = 24 > D + 1 = 6
    z = torch.randn(c * ipc, d, generator=g, dtype=torch.float64, requires_grad=True)
    real, real_y = torch.randn(40, d, generator=g, dtype=torch.float64), torch.arange(c).repeat(14)[:40]

    def dual(z):
        sd = real.std(0, keepdim=True)
        sd = torch.maximum(sd, (0.1 * sd.median()).clamp_min(1e-6))
        mean = real.mean(0, keepdim=True)
        x = torch.cat([(z - mean) / sd, torch.ones(len(z), 1, dtype=z.dtype)], 1)
        r = torch.cat([(real - mean) / sd, torch.ones(len(real), 1, dtype=z.dtype)], 1)
        y = F.one_hot(torch.arange(c).repeat_interleave(ipc), c).double() - 1 / c
        k = x @ x.T
        alpha = torch.linalg.solve(k + ridge * k.diagonal().mean() * torch.eye(len(z), dtype=z.dtype), y)
        return ((r @ x.T) @ alpha - (F.one_hot(real_y, c).double() - 1 / c)).pow(2).sum(1).mean()

    lp = ridge_probe_loss(z, probe_targets(real, real_y, c), ridge)
    (gp,) = torch.autograd.grad(lp, z)
    ld = dual(z)
    (gd,) = torch.autograd.grad(ld, z)
    torch.testing.assert_close(lp, ld)
    torch.testing.assert_close(gp, gd)
    assert gp.abs().max() > 1e-6
