"""The crop samplers of edgedd.host.augment: torchvision's (the default) and the reference code's."""

from __future__ import annotations

import pytest
import torch

from edgedd.core.config import AugmentConfig, DistillConfig
from edgedd.core.errors import EdgeddError
from edgedd.distillation.pipeline import validate
from edgedd.host.augment import render_views, sample_views

DRAWS = 100_000


def _stats(sampler: str, seed: int = 0):
    v = sample_views(DRAWS, AugmentConfig(crop_sampler=sampler), torch.Generator().manual_seed(seed))
    b = v.boxes.double()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    over = ((b[:, :2] < 0).any(1) | (b[:, 2:] > 1).any(1)).double().mean()
    return v, float(area.mean()), float(over)


def test_reference_sampler_matches_the_reference_box_distribution():
    """Mean area 0.54 +- 0.01 over 100k draws (the mean of U(0.08, 1): no box is rejected), about
    14% of the boxes reach past an edge, none wider than sqrt(4/3), zero padding there."""
    v, area, over = _stats("reference")
    assert abs(area - 0.54) <= 0.01, area
    assert 0.12 <= over <= 0.16, over
    w, h = v.boxes[:, 2] - v.boxes[:, 0], v.boxes[:, 3] - v.boxes[:, 1]
    assert float(torch.maximum(w, h).max()) <= (4 / 3) ** 0.5 + 1e-6
    assert v.padding == "zeros"
    assert 0.45 <= float(v.flips.double().mean()) <= 0.55


def test_default_sampler_is_unchanged_and_stays_inside():
    v, area, over = _stats("torchvision")
    assert AugmentConfig().crop_sampler == "torchvision" and v.padding == "border"
    assert over == 0.0
    assert abs(area - 0.478) <= 0.01, area


def test_reference_boxes_past_the_edge_render_zeros():
    img = torch.ones(1, 3, 16, 16)
    from edgedd.host.augment import Views

    inside = render_views(img, Views(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([False]), "zeros"), 8)
    assert torch.allclose(inside, torch.ones_like(inside))
    wide = render_views(img, Views(torch.tensor([[-0.5, 0.0, 1.5, 1.0]]), torch.tensor([False]), "zeros"), 8)
    assert float(wide[..., 0].abs().max()) == 0.0 and float(wide[..., 4].min()) == 1.0
    border = render_views(img, Views(torch.tensor([[-0.5, 0.0, 1.5, 1.0]]), torch.tensor([False])), 8)
    assert torch.allclose(border, torch.ones_like(border))


def test_unknown_sampler_is_one_line():
    with pytest.raises(EdgeddError, match="unknown crop sampler"):
        validate(DistillConfig(augment=AugmentConfig(crop_sampler="kornia")))


def test_distill_cli_takes_crop_sampler_reference(image_folder, tmp_path):
    """--crop-sampler reference reaches Stage II and is recorded with the run's config."""
    import json

    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    out = tmp_path / "run"
    r = CliRunner().invoke(
        app, tiny_distill_args(image_folder, out, "--iterations", "4", "--crop-sampler", "reference")
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads((out / "run.json").read_text())["identity"]["distill"]["augment"]["crop_sampler"] == "reference"
    r = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / "bad", "--crop-sampler", "kornia"))
    assert r.exit_code == 2


@pytest.mark.parametrize("side,resize,crop", [(73, 73, 64), (28, 73, 64), (96, 37, 32), (64, 110, 96)])
def test_eval_view_is_what_the_device_makes_of_a_canvas(side, resize, crop):
    """One canvas -> eval input path on the host (pack's edge path, evaluate's view through B), and
    it is the device's: edgedd.device.render's resize + centre crop in numpy, to float rounding."""
    import numpy as np

    from edgedd.device.render import center_crop, resize_square
    from edgedd.host.augment import eval_view

    x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(side))
    host = eval_view(x, resize, crop)
    dev = x.numpy() if side == resize else resize_square(x.numpy(), resize)
    assert host.shape == (3, 3, crop, crop)
    np.testing.assert_allclose(host.numpy(), center_crop(dev, crop), atol=1e-5)


@pytest.mark.parametrize("resize, crop", [(73, 64), (256, 224), (32, 32), (37, 32)])
def test_device_views_start_with_the_eval_view_then_mild_crops(resize, crop):
    """The views the device fits its projector on: view 0 of each image renders to exactly the centre
    crop real images get (eval_view, also where resize - crop is odd), not flipped; the rest stay inside
    the image with area >= crop_min."""
    from edgedd.host.augment import device_views, eval_box, eval_view

    n, k = 6, 8
    v = device_views(n, k, eval_box(resize, crop), 0.5, torch.Generator().manual_seed(0))
    canvases = torch.rand(n, 3, resize, resize, generator=torch.Generator().manual_seed(1))
    first = render_views(canvases, type(v)(v.boxes.view(n, k, 4)[:, 0], v.flips.view(n, k)[:, 0]), crop)
    torch.testing.assert_close(
        first, eval_view(canvases, resize, crop), atol=1e-4, rtol=0
    )  # float32 grid rounding; off by half a pixel is ~0.1-0.7
    boxes, flips = v.boxes.view(n, k, 4).double(), v.flips.view(n, k)
    assert not flips[:, 0].any() and flips[:, 1:].any()
    rest = boxes[:, 1:].reshape(-1, 4)
    area = (rest[:, 2] - rest[:, 0]) * (rest[:, 3] - rest[:, 1])
    assert float(area.min()) >= 0.5 - 1e-6 and (rest >= -1e-6).all() and (rest <= 1 + 1e-6).all()
    wide = sample_views(n * (k - 1) * 20, AugmentConfig(), torch.Generator().manual_seed(0)).boxes.double()
    assert float(((wide[:, 2] - wide[:, 0]) * (wide[:, 3] - wide[:, 1])).min()) < 0.5  # METHOD.md's crops go smaller


def test_each_method_takes_its_loss_views_unless_told_otherwise():
    """sfm_sub_probe (the default) and sfm_sub take their loss on mild views; the paper's SFM and the other methods keep
    METHOD.md's reference views; explicit values win; the stored config holds the views used."""
    from dataclasses import replace

    from edgedd.core.config import method_views, to_dict

    d = DistillConfig()
    assert (
        d.method == "sfm_sub_probe" and d.lr == 2e-3 and d.augment.crop_scale == (0.25, 1.0) and d.augment.noise_p == 0
    )
    assert d.augment.centre_p == 0.5 and DistillConfig(method="sfm").augment.centre_p == 0
    for m in ("sfm", "sfm_anchor", "lgm"):
        assert DistillConfig(method=m).augment == AugmentConfig()
    assert DistillConfig(method="sfm_sub", augment=AugmentConfig(noise_p=0.1)).augment.noise_p == 0.1
    assert to_dict(DistillConfig(method="sfm"))["augment"]["noise_p"] == 0.5  # run.json records the views, never null
    assert replace(DistillConfig(), method="sfm", augment=None).augment == AugmentConfig()
    assert method_views("sfm", crop_sampler="torchvision") == AugmentConfig()
    assert method_views("sfm_sub", crop_sampler="reference", noise_p=0.3) == AugmentConfig(
        crop_scale=(0.25, 1.0), noise_p=0.3, crop_sampler="reference", centre_p=0.5
    )
    assert method_views("sfm_sub", centre_p=0.0).centre_p == 0.0


def test_centre_views_are_the_eval_view_and_leave_other_draws_alone():
    """AugmentConfig.centre_p: that share of the views is the exact centre crop, not flipped (the view the
    probes' test images and the device get); at 0 the draws are the ones runs have always made."""
    from edgedd.host.augment import Views, eval_box, eval_view, sample_augment

    resize, crop, n = 37, 32, 4000
    always = sample_augment(n, AugmentConfig(centre_p=1.0), crop, torch.Generator().manual_seed(0), canvas=resize)
    lo, hi = eval_box(resize, crop)
    assert (
        torch.equal(always.views.boxes, torch.tensor([[lo, lo, hi, hi]]).expand(n, 4)) and not always.views.flips.any()
    )
    canvases = torch.rand(3, 3, resize, resize, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        render_views(canvases, Views(always.views.boxes[:3], always.views.flips[:3]), crop),
        eval_view(canvases, resize, crop),
        atol=1e-4,
        rtol=0,
    )
    half = sample_augment(n, AugmentConfig(centre_p=0.5), crop, torch.Generator().manual_seed(0), canvas=resize)
    centred = (half.views.boxes == torch.tensor([lo, lo, hi, hi])).all(1)
    assert 0.45 < float(centred.double().mean()) < 0.55 and not half.views.flips[centred].any()
    never = sample_augment(n, AugmentConfig(), crop, torch.Generator().manual_seed(0))
    plain = sample_views(n, AugmentConfig(), torch.Generator().manual_seed(0))
    assert torch.equal(never.views.boxes, plain.boxes) and torch.equal(never.views.flips, plain.flips)
    assert torch.equal(half.views.boxes[~centred], plain.boxes[~centred])  # the other views keep their draws
    with pytest.raises(ValueError, match="canvas size"):
        sample_augment(2, AugmentConfig(centre_p=0.5), crop, torch.Generator().manual_seed(0))


def test_distill_cli_takes_centre_view(image_folder, tmp_path):
    import json

    from conftest import tiny_distill_args
    from typer.testing import CliRunner

    from edgedd.cli.host import app

    args = tiny_distill_args(image_folder, tmp_path / "run", "--iterations", "2", "--centre-view", "0.5", "--json")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["config"]["augment"]["centre_p"] == 0.5
    r = CliRunner().invoke(app, tiny_distill_args(image_folder, tmp_path / "bad", "--centre-view", "1.5"))
    assert r.exit_code == 2


def test_sfm_probe_runs_on_the_views_it_was_measured_with():
    # docs/RESULTS.md's sfm_probe rows pass crops >= 25%, no noise, half centre views; the CLI's
    # default for the method must be that, not the reference's views
    from edgedd.core.config import DistillConfig, method_views

    assert method_views("sfm_probe") == method_views("sfm_sub") == method_views("sfm_sub_probe")
    assert DistillConfig(method="sfm_probe").augment == AugmentConfig(crop_scale=(0.25, 1.0), noise_p=0.0, centre_p=0.5)
    assert method_views("sfm") == AugmentConfig()
