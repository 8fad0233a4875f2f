"""--init mix and --min-copy-ratio (edgedd.distillation.copyfloor): the floor's ratio is the copy ratio's
pixel figure, its gradient moves a near-copy away, a run with it ends with every image above it, and
the refusals are one line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import tiny_distill_args
from typer.testing import CliRunner

from edgedd.core.config import DistillConfig


def _canvases(source, info):
    from edgedd.host.data import CanvasDataset

    pp = info.preprocess
    data = CanvasDataset(source, pp.resize_size, pp.interpolation)
    return torch.from_numpy(np.stack([data[i][0] for i in range(len(source))])).permute(0, 3, 1, 2).float() / 255


def _floor(source, backbone, tau=1.0, features=False):
    from edgedd.distillation.copyfloor import CopyFloor

    model, info = backbone
    cfg = DistillConfig(min_copy_ratio=tau, init="mix", copy_floor_features=features, amp=False)
    return CopyFloor(None, model, info, cfg, source, torch.device("cpu"), 0)


def test_floor_ratio_is_the_copy_ratio_pixel_figure(image_folder, tiny_backbone):
    from edgedd.core.images import open_dataset
    from edgedd.distillation.copies import measure

    model, info = tiny_backbone
    source = open_dataset(str(image_folder))
    real = _canvases(source, info)
    gen = torch.Generator().manual_seed(0)
    images = torch.cat([real[:3] * 0.7 + 0.15, torch.rand(3, *real.shape[1:], generator=gen)])
    pixels = measure(model, info, source, {"s": images}, seed=0, device=torch.device("cpu"), amp=False, progress=False)
    floor = _floor(source, tiny_backbone, features=True)
    with torch.no_grad():
        r = floor.ratios(images)
    # the floor holds the training vectors in float16: equal to that rounding
    for space in ("pixels", "features"):
        np.testing.assert_allclose(r[space].numpy(), pixels["s"]["spaces"][space]["ratios"], rtol=3e-3)
    assert set(_floor(source, tiny_backbone).ratios(images)) == {"pixels"}  # features only when asked


def test_floor_is_zero_above_tau_and_its_gradient_moves_a_near_copy_away(image_folder, tiny_backbone):
    from edgedd.core.images import open_dataset

    _, info = tiny_backbone
    source = open_dataset(str(image_folder))
    real = _canvases(source, info)
    floor = _floor(source, tiny_backbone, tau=1.0)
    far = torch.full((1, *real.shape[1:]), 0.5)
    assert floor.ratios(far)["pixels"].item() > 1 and floor.loss(far).item() == 0.0
    near = (real[:1] + 0.01 * torch.randn(real[:1].shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    near.requires_grad_(True)
    before = floor.ratios(near)["pixels"].item()
    assert before < 0.5 and floor.loss(near).item() > 0
    floor.loss(near).backward()
    moved = (near - 0.05 * near.grad / near.grad.norm()).detach()
    assert floor.ratios(moved)["pixels"].item() > before


def test_init_mix_averages_real_draws_of_the_class(image_folder, tiny_backbone):
    from edgedd.core.images import open_dataset
    from edgedd.distillation.stage2 import initial_images, real_init_images

    _, info = tiny_backbone
    source = open_dataset(str(image_folder))
    cfg = DistillConfig(ipc=2, init="mix", mix=3, syn_res=32)
    mixed = initial_images(source, cfg, "bilinear")
    draws = real_init_images(source, 6, 32, "bilinear", cfg.seed)  # per class 2 x 3 draws, class-major
    assert mixed.shape == (source.num_classes * 2, 3, 32, 32)
    torch.testing.assert_close(mixed[3], draws[9:12].mean(0))  # class 1, image 1: that class's draws 3..5
    assert torch.equal(
        initial_images(source, replace(cfg, init="real"), "bilinear"), real_init_images(source, 2, 32, "bilinear", 0)
    )


def test_a_run_with_the_floor_ends_above_it_and_says_so(image_folder, tmp_path):
    from edgedd.cli.host import app

    out = tmp_path / "run"
    args = tiny_distill_args(
        image_folder, out, "--ipc", "2", "--iterations", "30", "--lr", "0.05", "--init", "mix", "--mix", "3"
    )
    r = CliRunner().invoke(app, [*args, "--min-copy-ratio", "1.0", "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (
        s["copy_floor"]["min_copy_ratio"] == 1.0
        and s["copy_floor"]["spaces"] == ["pixels", "features"]
        and s["copy_floor"]["loss_last"] == pytest.approx(0.0, abs=1e-3)
    )
    for space in ("pixels", "features"):  # the run's own measurement (float32) agrees
        assert s["copy_ratio"]["spaces"][space]["min"] >= 0.99, space
    assert s["copy_ratio_start"]["spaces"]["pixels"]["min"] < 1.0  # the floor did the moving
    assert s["config"]["init"] == "mix" and s["config"]["min_copy_ratio"] == 1.0


def test_floor_refusals_are_one_line(image_folder, tmp_path, monkeypatch):
    from edgedd.cli.host import app
    from edgedd.distillation import copyfloor

    args = tiny_distill_args(image_folder, tmp_path / "a", "--iterations", "2")
    r = CliRunner().invoke(app, [*args, "--min-copy-ratio", "1"])  # --init real: nothing to push along
    assert r.exit_code == 1 and "--init mix" in r.output and "Traceback" not in r.output
    monkeypatch.setattr(copyfloor, "MAX_BYTES", 1000)
    args = tiny_distill_args(image_folder, tmp_path / "b", "--iterations", "2", "--init", "mix")
    r = CliRunner().invoke(app, [*args, "--min-copy-ratio", "1"])
    assert r.exit_code == 1 and "GiB" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "b" / "summary.json").exists()
    assert not (tmp_path / "b" / "stats.safetensors").exists()  # refused before Stage I


def test_chunked_floor_leaves_the_gradients_of_one_pass(image_folder, tiny_backbone):
    from types import SimpleNamespace

    from edgedd.core.images import open_dataset
    from edgedd.distillation.pyramid import Pyramid

    _, info = tiny_backbone
    source = open_dataset(str(image_folder))
    floor = _floor(source, tiny_backbone, tau=1.5, features=True)  # 1.5: every image below it, in both spaces
    start = (_canvases(source, info)[:5] * 0.6 + 0.2).clamp(0, 1)
    grads, losses = [], []
    for chunk in (0, 2):
        floor.chunk, floor.step = chunk, lambda loop: torch.zeros(())
        loop = SimpleNamespace(pyr=Pyramid.from_images(start))
        for lv in loop.pyr.levels:
            lv.requires_grad_(True)
        losses.append(float(floor(loop)))
        grads.append(loop.pyr.levels[-1].grad.clone())
    assert losses[0] > 0 and losses[0] == pytest.approx(losses[1], rel=1e-3)  # float32 forwards of other batch sizes
    # float32 forwards of other batch sizes differ in the last bits: compare the whole gradient
    assert float((grads[0] - grads[1]).norm() / grads[0].norm()) < 1e-3


def test_duplicated_training_images_leave_no_scale_and_are_refused(tmp_path, tiny_backbone):
    import shutil

    from conftest import make_image_folder

    from edgedd.core.errors import EdgeddError
    from edgedd.core.images import open_dataset

    root = make_image_folder(tmp_path / "data", per_class=3)
    for f in list(root.rglob("*.*")):  # every image twice: each one's nearest other is at distance 0
        shutil.copy(f, f.with_name("dup_" + f.name))
    with pytest.raises(EdgeddError, match="no scale in pixels"):
        _floor(open_dataset(str(root)), tiny_backbone)
