"""The pyramid parameterisation and its growth schedule."""

from dataclasses import replace

import pytest
import torch

from edgedd.core.config import DistillConfig
from edgedd.core.errors import EdgeddError
from edgedd.distillation.pipeline import validate
from edgedd.distillation.pyramid import COLOR_DECORRELATION, Pyramid, decode, extension_steps, level_resolutions


def test_level_resolutions():
    assert level_resolutions(256) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert level_resolutions(224) == [1, 2, 4, 8, 16, 32, 64, 128, 224]
    assert level_resolutions(1) == [1]


def test_reference_schedule():
    assert extension_steps(5000, 256, 200) == [200 * (e + 1) for e in range(8)]


def test_decode_shape_and_range():
    g = torch.Generator().manual_seed(0)
    pyr = Pyramid.init(6, 32, g)
    for _ in range(3):
        pyr.extend(g)
    x = pyr.decode()
    assert x.shape == (6, 3, 32, 32)
    assert (x > 0).all() and (x < 1).all()
    # even huge level values stay inside the open interval (sigmoid)
    big = decode([torch.full((2, 3, 4, 4), 5.0)], 8)
    assert (big < 1).all() and (big > 0).all()


def test_levels_gained_on_schedule():
    g = torch.Generator().manual_seed(0)
    ext = extension_steps(1000, 32, 200)  # 5 extensions: every 100 steps (half the run at most)
    assert ext == [100, 200, 300, 400, 500]
    pyr = Pyramid.init(2, 32, g)
    seen = {}
    for step in range(1000):
        pyr.grow(step, ext, g)
        seen[step] = pyr.resolutions[-1]
    assert seen[0] == 1 and seen[99] == 1 and seen[100] == 2 and seen[499] == 16 and seen[500] == 32
    assert pyr.resolutions == [1, 2, 4, 8, 16, 32]


def test_short_runs_still_reach_full_resolution():
    for iterations in (1, 2, 3, 7, 10, 50):
        ext = extension_steps(iterations, 256, 200)
        g = torch.Generator().manual_seed(0)
        pyr = Pyramid.init(1, 256, g)
        for step in range(iterations):
            pyr.grow(step, ext, g)
        assert pyr.full, iterations
        assert max(ext) <= iterations // 2


def test_extension_scales_old_levels_and_adds_scaled_noise():
    g = torch.Generator().manual_seed(0)
    pyr = Pyramid.init(3, 16, g)
    pyr.extend(g)
    before = [lv.detach().clone() for lv in pyr.levels]
    pyr.extend(g)
    for b, a in zip(before, pyr.levels[:2], strict=True):
        torch.testing.assert_close(a.detach(), b * 2 / 3)
    assert pyr.levels[2].shape == (3, 3, 4, 4)
    assert 0.15 < pyr.levels[2].std().item() < 0.6  # N(0, 1) / 3
    assert all(lv.requires_grad for lv in pyr.levels)


def test_colour_decorrelation_is_normalised():
    assert torch.isclose(COLOR_DECORRELATION.norm(dim=0).max(), torch.tensor(1.0, dtype=torch.float64))


def test_from_images_decodes_back_to_the_images_as_a_full_pyramid():
    """--init real: every level present (zeros below), decode(levels) = the images up to the clamp."""
    x = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    pyr = Pyramid.from_images(x)
    assert pyr.resolutions == level_resolutions(24) and pyr.full
    assert all(float(lv.detach().abs().max()) == 0 for lv in pyr.levels[:-1])
    assert torch.allclose(pyr.decode(), x.clamp(0.01, 0.99), atol=1e-5)
    # a shard holds its rows of the whole set
    part = Pyramid.from_images(x[2:4], rows=(2, 4), total=5)
    assert part.rows == (2, 4) and part.total == 5 and torch.allclose(part.decode(), pyr.decode()[2:4])


def test_pixel_space_starts_exactly_on_the_images_and_moves_every_pixel_at_one_rate():
    """--param-space pixel: decode gives back the images unclamped (0 and 1 included); the clamp is
    passed straight through, so a pixel at 0 still gets the loss's gradient, where the logit space's
    sigmoid gives it a fiftieth of an edge pixel's."""
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x[:, :, :4] = 0.0  # a black band, like a digit's background
    pix, logit = Pyramid.from_images(x, space="pixel"), Pyramid.from_images(x)
    assert pix.space == "pixel" and torch.allclose(pix.decode(), x, atol=1e-6)
    for pyr in (pix, logit):
        pyr.decode().sum().backward()
    g_pix, g_logit = pix.levels[-1].grad, logit.levels[-1].grad
    band_pix, rest_pix = g_pix[:, :, :4].abs().mean(), g_pix[:, :, 4:].abs().mean()
    band_logit, rest_logit = g_logit[:, :, :4].abs().mean(), g_logit[:, :, 4:].abs().mean()
    assert torch.isclose(band_pix, rest_pix, rtol=1e-4)  # one rate everywhere
    assert band_logit < rest_logit / 5  # the sigmoid starves the saturated band
    # pushed past 0, the output stays in [0, 1] and the gradient still reaches the level
    pushed = Pyramid([lv.detach() - 0.5 for lv in pix.levels], 16, space="pixel")
    y = pushed.decode()
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    y.sum().backward()
    assert float(pushed.levels[-1].grad.norm(dim=1).min()) > 0.5  # every pixel, past 0 or not


def test_pixel_space_needs_a_real_start():
    with pytest.raises(EdgeddError, match="param-space pixel"):
        validate(replace(DistillConfig(), init="noise", param_space="pixel"))
    with pytest.raises(EdgeddError, match="parameter space"):
        validate(replace(DistillConfig(), param_space="hsv"))
    validate(replace(DistillConfig(), param_space="pixel"))
