"""The pyramid parameterisation and its growth schedule."""

import torch

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
